"""Export parity: our student (and classifier) against transformers' ViT and timm's layout, 1e-5."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mim_jax import export
from mim_jax.data import normalization
from mim_jax.models.vit import ViT
from mim_jax.objectives import classify

ATOL = 1e-5  # float32 parity; never relaxed
SIZE, PATCH = 16, 4
torch.set_num_threads(1)


def tiny_vit(**kw) -> ViT:
  return ViT(patch=PATCH, width=32, depth=2, num_heads=2, mlp_dim=64, image_size=SIZE, **kw)


def perturb(params, seed=0, scale=0.3):
  """Moves LayerNorm scales off 1 and every bias/token off 0, so that each mapping is tested."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  out = []
  for (path, x), k in zip(leaves, keys):
    name = str(getattr(path[-1], "key", path[-1]))
    noisy = name in ("scale", "bias", "qkv_bias", "out_bias", "cls", "pos_embedding", "ls1",
                     "ls2")
    out.append(x + scale * jax.random.normal(k, x.shape) if noisy else x)
  return jax.tree_util.tree_unflatten(treedef, out)


def init(module, seed=0):
  size = getattr(module, "image_size", SIZE)
  images = jnp.zeros((1, size, size, 3))
  params = module.init({"params": jax.random.key(seed), "dropout": jax.random.key(seed)},
                       images)["params"]
  return perturb(nn.meta.unbox(params), seed)


def images(batch=2, seed=1):
  return np.random.default_rng(seed).normal(size=(batch, SIZE, SIZE, 3)).astype(np.float32)


def nchw(x):
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def max_err(a, b):
  a = np.asarray(a, np.float64)
  b = np.asarray(b.detach().numpy() if hasattr(b, "detach") else b, np.float64)
  assert a.shape == b.shape, (a.shape, b.shape)
  return float(np.abs(a - b).max())


@pytest.mark.parametrize("posemb", ["sincos", "learned"])
def test_hf_vit_model_parity(tmp_path, posemb):
  from transformers import ViTModel  # pylint: disable=import-outside-toplevel
  vit = tiny_vit(posemb=posemb)
  params = init(vit)
  export.export_hf(params, vit, str(tmp_path))
  model = ViTModel.from_pretrained(str(tmp_path), attn_implementation="eager").eval()
  x = images()
  out, aux = vit.apply({"params": params}, x)
  with torch.no_grad():
    ref = model(nchw(x), output_hidden_states=True)
  assert len(ref.hidden_states) == vit.depth + 1
  errs = {f"block{i}": max_err(aux["blocks"][i], ref.hidden_states[i + 1])
          for i in range(vit.depth)}
  errs["last_hidden_state"] = max_err(out, ref.last_hidden_state)
  assert max(errs.values()) < ATOL, errs
  with open(tmp_path / "config.json") as f:
    config = json.load(f)
  assert config["layer_norm_eps"] == 1e-6 and config["hidden_act"] == "gelu"
  with open(tmp_path / "preprocessor_config.json") as f:
    assert json.load(f)["image_mean"] == list(normalization.STUDENT_MEAN)


def test_sincos_written_with_zero_cls_row(tmp_path):
  vit = tiny_vit()
  sd = export.hf_state_dict(init(vit), vit)
  pos = sd["embeddings.position_embeddings"][0]
  assert pos.shape == (vit.num_patches + 1, vit.width)
  np.testing.assert_array_equal(pos[0], 0.0)
  assert np.abs(pos[1:]).max() > 0.5


def classifier(pool):
  return classify.Classifier(student=tiny_vit(), num_classes=5, pool=pool, head_init_std=0.5)


def test_hf_classifier_parity(tmp_path):
  from transformers import ViTForImageClassification  # pylint: disable=import-outside-toplevel
  model_ours = classifier("cls")
  params = init(model_ours)
  export.export_hf(params["student"], model_ours.student, str(tmp_path),
                   head=classify.head_params(params))
  model = ViTForImageClassification.from_pretrained(str(tmp_path),
                                                    attn_implementation="eager").eval()
  x = images()
  logits = model_ours.apply({"params": params}, x)["logits"]
  with torch.no_grad():
    ref = model(nchw(x)).logits
  assert max_err(logits, ref) < ATOL


def test_hf_refuses_what_it_cannot_express(tmp_path):
  model_ours = classifier("avg")
  params = init(model_ours)
  with pytest.raises(ValueError, match="export_timm"):
    export.export_hf(params["student"], model_ours.student, str(tmp_path),
                     head=classify.head_params(params))
  with pytest.raises(ValueError, match="not the classifier's whole tree"):
    export.hf_state_dict(params, model_ours.student)
  vit = tiny_vit(layer_scale=0.1)
  with pytest.raises(ValueError, match="layer scale"):
    export.hf_state_dict(init(vit), vit)
  with pytest.raises(ValueError, match="missing"):
    export.hf_state_dict(init(tiny_vit()), tiny_vit(posemb="learned"))


def test_round_trip_through_teacher_loader(tmp_path):
  try:
    from mim_jax import teachers  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    pytest.skip(f"mim_jax.teachers is not importable yet: {e}")
  vit = tiny_vit()
  params = init(vit)
  export.export_hf(params, vit, str(tmp_path))
  teacher = teachers.load(str(tmp_path))
  assert (teacher.image_size, teacher.patch_size, teacher.depth) == (SIZE, PATCH, vit.depth)
  x = images()
  out, aux = vit.apply({"params": params}, x)
  t_out = teacher.apply(teacher.params, x)
  for i in range(vit.depth):
    assert max_err(aux["blocks"][i], t_out["hidden_states"][i + 1]) < ATOL, i
  assert max_err(out, t_out["final"]) < ATOL


# --------------------------------------------------------------------------------------------
# timm: the layout is checked against a torch forward written from timm's conventions (always),
# and against timm itself when it is installed.
# --------------------------------------------------------------------------------------------
def timm_convention_forward(sd, x, depth, heads, pool):
  """timm's VisionTransformer forward on its state dict: [CLS, patches] + pos_embed, pre-LN
  blocks with fused qkv rows in (q|k|v, head, dh) order, then norm (token) or fc_norm (avg)."""
  f = torch.nn.functional
  ln = lambda t, p: f.layer_norm(t, t.shape[-1:], sd[p + ".weight"], sd[p + ".bias"], 1e-6)
  t = f.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=PATCH)
  t = t.flatten(2).transpose(1, 2)
  t = torch.cat([sd["cls_token"].expand(t.shape[0], -1, -1), t], 1) + sd["pos_embed"]
  blocks = []
  for i in range(depth):
    p = f"blocks.{i}."
    b, n, d = t.shape
    qkv = f.linear(ln(t, p + "norm1"), sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"])
    q, k, v = qkv.reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    a = torch.softmax(q @ k.transpose(-2, -1) * (d // heads) ** -0.5, -1) @ v
    y = f.linear(a.transpose(1, 2).reshape(b, n, d), sd[p + "attn.proj.weight"],
                 sd[p + "attn.proj.bias"])
    t = t + y * sd.get(p + "ls1.gamma", 1.0)
    y = f.linear(f.gelu(f.linear(ln(t, p + "norm2"), sd[p + "mlp.fc1.weight"],
                                 sd[p + "mlp.fc1.bias"])), sd[p + "mlp.fc2.weight"],
                 sd[p + "mlp.fc2.bias"])
    t = t + y * sd.get(p + "ls2.gamma", 1.0)
    blocks.append(t)
  feats = ln(t, "norm") if pool == "token" else t
  pooled = feats[:, 0] if pool == "token" else ln(feats[:, 1:].mean(1), "fc_norm")
  logits = f.linear(pooled, sd["head.weight"], sd["head.bias"]) if "head.weight" in sd else None
  return blocks, feats, logits


@pytest.mark.parametrize("pool", [None, "cls", "avg"])
def test_timm_layout(tmp_path, pool):
  model_ours = classifier(pool) if pool else tiny_vit(layer_scale=0.1)
  params = init(model_ours)
  student = params["student"] if pool else params
  vit = model_ours.student if pool else model_ours
  head = classify.head_params(params) if pool else None
  config = export.export_timm(student, vit, str(tmp_path), head=head)
  with open(tmp_path / "config.json") as f:
    assert json.load(f) == config
  kwargs = config["model_args"]
  path = str(tmp_path / "model.safetensors")
  assert config["pretrained_cfg"]["num_classes"] == config["num_classes"] == kwargs["num_classes"]
  assert kwargs["global_pool"] == ("avg" if pool == "avg" else "token")
  sd = load_file(path)
  assert ("norm.weight" in sd) == (pool != "avg") and ("fc_norm.weight" in sd) == (pool == "avg")
  x = images()
  blocks, feats, logits = timm_convention_forward(sd, nchw(x), vit.depth, vit.num_heads,
                                                  kwargs["global_pool"])
  if pool:
    out = model_ours.apply({"params": params}, x)
    assert max_err(out["logits"], logits) < ATOL
    _, aux = vit.apply({"params": student}, x)
  else:
    out, aux = vit.apply({"params": student}, x)
    assert max_err(out, feats) < ATOL
  for i in range(vit.depth):
    assert max_err(aux["blocks"][i], blocks[i]) < ATOL, i


@pytest.mark.parametrize("pool", [None, "cls", "avg"])
def test_timm_parity(tmp_path, pool):
  pytest.importorskip("timm", reason="timm is optional (requirements-timm.txt)")
  from timm.models.vision_transformer import VisionTransformer  # pylint: disable=import-outside-toplevel
  model_ours = classifier(pool) if pool else tiny_vit(layer_scale=0.1)
  params = init(model_ours)
  student = params["student"] if pool else params
  vit = model_ours.student if pool else model_ours
  head = classify.head_params(params) if pool else None
  kwargs = export.export_timm(student, vit, str(tmp_path), head=head)["model_args"]
  path = str(tmp_path / "model.safetensors")
  model = VisionTransformer(**kwargs).eval()
  model.load_state_dict(load_file(path), strict=True)
  x = images()
  out, aux = vit.apply({"params": student}, x)
  with torch.no_grad():
    feats = model.forward_features(nchw(x))
    logits = model.forward_head(feats)
  # Token pooling: forward_features ends with the final norm; average pooling: with the last
  # block (timm's norm is an Identity there and fc_norm follows the pooling).
  assert max_err(out if kwargs["global_pool"] == "token" else aux["blocks"][-1], feats) < ATOL
  if pool:
    assert max_err(model_ours.apply({"params": params}, x)["logits"], logits) < ATOL


# --------------------------------------------------------------------------------------------
# What a PyTorch user gets: strict loads, no random pooler, the evaluation preprocessing, labels.
# --------------------------------------------------------------------------------------------
def test_automodel_loads_everything_and_pooler_is_the_cls_token(tmp_path):
  vit = tiny_vit()
  params = init(vit)
  export.export_hf(params, vit, str(tmp_path))
  assert export.self_check(str(tmp_path), params, vit) < ATOL  # strict, features equal
  from transformers import AutoModel  # pylint: disable=import-outside-toplevel
  a, b = (AutoModel.from_pretrained(str(tmp_path)).eval() for _ in range(2))
  x = nchw(images())
  with torch.no_grad():
    out_a, out_b = a(x), b(x)
  # Two loads agree (nothing initialised at random), and pooler_output is the final-norm CLS.
  assert max_err(out_a.pooler_output, out_b.pooler_output) == 0.0
  assert max_err(out_a.pooler_output.numpy(), out_a.last_hidden_state[:, 0]) < ATOL


def test_self_check_catches_a_wrong_export(tmp_path):
  vit = tiny_vit()
  params = init(vit)
  export.export_hf(params, vit, str(tmp_path))
  with pytest.raises(export.ExportError, match="differ"):
    export.self_check(str(tmp_path), init(vit, seed=5), vit)


def smooth_photo(h=45, w=80, seed=0):
  """A non-square uint8 photo-like image: a few low-frequency waves per channel."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
  img = np.stack([sum(np.sin(2 * np.pi * (rng.uniform(0.5, 2) * xx + rng.uniform(0.5, 2) * yy)
                              + rng.uniform(0, 6)) for _ in range(3)) for _ in range(3)], -1)
  return np.uint8(np.clip(127.5 + 40 * img, 0, 255))


def test_preprocessor_reproduces_the_evaluation_crop(tmp_path):
  """transformers' processor on a non-square photo gives (nearly) the pixels of mim_jax's own
  evaluation op: shorter side to size / crop_pct, bicubic, centre crop, ImageNet mean/std."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from transformers import AutoImageProcessor  # pylint: disable=import-outside-toplevel
  from mim_jax.data import preprocess  # pylint: disable=import-outside-toplevel
  vit = tiny_vit()
  export.export_hf(init(vit), vit, str(tmp_path))
  photo = smooth_photo()
  theirs = AutoImageProcessor.from_pretrained(str(tmp_path))(
      Image.fromarray(photo), return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
  ours = np.asarray(preprocess.eval_op(SIZE, crop_pct=normalization.CROP_PCT)(photo))
  assert theirs.shape == ours.shape == (SIZE, SIZE, 3)
  # A squashed (uncropped) resize of this 45x80 photo is far off; the crop agrees to resampling.
  assert np.abs(theirs - ours).mean() < 0.05, np.abs(theirs - ours).mean()


def test_labels_are_written_and_checked(tmp_path):
  model_ours = classifier("cls")
  params = init(model_ours)
  names = ["zero", "one", "two", "three", "four"]
  export.export_hf(params["student"], model_ours.student, str(tmp_path / "hf"),
                   head=classify.head_params(params), labels=names)
  with open(tmp_path / "hf" / "config.json") as f:
    assert json.load(f)["id2label"] == {str(i): n for i, n in enumerate(names)}
  config = export.export_timm(params["student"], model_ours.student, str(tmp_path / "timm"),
                              head=classify.head_params(params), labels=names)
  assert config["label_names"] == names
  with pytest.raises(ValueError, match="one distinct name per class"):
    export.export_hf(params["student"], model_ours.student, str(tmp_path / "bad"),
                     head=classify.head_params(params), labels=names[:3])
  assert not (tmp_path / "bad").exists()  # refused before anything was written


def test_timm_folder_names_a_timm_model_and_its_data_config(tmp_path):
  config = export.export_timm(init(tiny_vit()), tiny_vit(), str(tmp_path))
  assert config["architecture"] == "vit_base_patch16_224"  # model_args override its sizes
  assert config["model_args"]["embed_dim"] == 32 and config["model_args"]["num_classes"] == 0
  cfg = config["pretrained_cfg"]
  assert (cfg["mean"], cfg["std"]) == (list(normalization.STUDENT_MEAN),
                                        list(normalization.STUDENT_STD))
  assert (cfg["crop_pct"], cfg["interpolation"], cfg["input_size"]) == (0.875, "bicubic",
                                                                        [3, SIZE, SIZE])
  vit_b = ViT.from_variant("B/16")
  assert export.timm_architecture(vit_b) == "vit_base_patch16_224"
  assert export.timm_architecture(ViT.from_variant("L/16")) == "vit_large_patch16_224"


@pytest.mark.slow
def test_cli_exports_a_classify_run(tmp_path, capsys):
  """`python -m mim_jax.export` on a 2-step digits classifier: both formats, the dataset's label
  names, the self-check; a bad workdir is one `error:` line."""
  from configs import classify_digits  # pylint: disable=import-outside-toplevel
  from mim_jax import train  # pylint: disable=import-outside-toplevel
  config = classify_digits.get_config("runlocal=True")
  config.total_steps = 2
  workdir = str(tmp_path / "run")
  result = train.train_and_evaluate(config, workdir)
  assert export.main(["--workdir", workdir, "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
  assert "self-check" in capsys.readouterr().out
  with open(tmp_path / "hf" / "config.json") as f:
    assert json.load(f)["id2label"]["3"] == "3"  # the digits' ClassLabel names
  assert export.main(["--workdir", workdir, "--format", "timm", "--out", str(tmp_path / "timm"),
                      "--labels", ",".join("abcdefghij")]) == 0
  with open(tmp_path / "timm" / "config.json") as f:
    assert json.load(f)["label_names"] == list("abcdefghij")
  # The exported classifier computes the run's logits.
  from transformers import ViTForImageClassification  # pylint: disable=import-outside-toplevel
  model = ViTForImageClassification.from_pretrained(str(tmp_path / "hf")).eval()
  x = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)
  ours = result.setup.model.apply({"params": jax.device_get(result.state.params)}, x)["logits"]
  with torch.no_grad():
    assert max_err(ours, model(nchw(x)).logits) < ATOL
  capsys.readouterr()
  assert export.main(["--workdir", str(tmp_path / "nope"), "--format", "hf",
                      "--out", str(tmp_path / "x")]) == 1
  out = capsys.readouterr().out.strip().splitlines()
  assert len(out) == 1 and out[0].startswith("error:") and not (tmp_path / "x").exists()


def test_pytorch_user_gets_mim_jax_features_through_their_own_preprocessing(tmp_path):
  """tests/torch_consumer.py, run in a fresh interpreter that cannot import mim_jax, loads the
  exports with transformers' pipeline (and timm where installed) and gets mim_jax's evaluation
  features of a non-square photo within 2%."""
  import os  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from mim_jax.data import preprocess  # pylint: disable=import-outside-toplevel
  size = 32
  vit = ViT(patch=PATCH, width=32, depth=2, num_heads=2, mlp_dim=64, image_size=size)
  params = init(vit)
  export.export_hf(params, vit, str(tmp_path / "hf"))
  export.export_timm(params, vit, str(tmp_path / "timm"))
  photo = smooth_photo(90, 160)
  Image.fromarray(photo).save(tmp_path / "photo.png")
  tokens, _ = vit.apply({"params": params}, np.asarray(preprocess.eval_op(size)(photo))[None])
  np.save(tmp_path / "expect.npy", np.asarray(tokens[0]))
  script = os.path.join(os.path.dirname(__file__), "torch_consumer.py")
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  run = subprocess.run([sys.executable, script, "--image", "photo.png", "--expect", "expect.npy",
                        "--hf", "hf", "--timm", "timm"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stdout + run.stderr
  print(run.stdout)
  assert "transformers pipeline: CLS" in run.stdout
