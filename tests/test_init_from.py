"""init_from: a fine-tune starts from another run's student, strictly, or stops in one line."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import finetune_b16, mae_b16
from mim_jax import assembly, checkpoint as ckpt_lib, init_from, sharding, step as step_lib
from mim_jax import train
from mim_jax.convert import layout, resize


@pytest.fixture(scope="module")
def mae_workdir(tmp_path_factory):
  """A 2-step MAE pretraining run of the runlocal nano student (checkpoints at steps 1, 2)."""
  c = mae_b16.get_config("runlocal=True")
  c.total_steps, c.checkpoint_every, c.async_checkpoint = 2, 1, False
  workdir = str(tmp_path_factory.mktemp("mae"))
  train.train_and_evaluate(c, workdir)
  return workdir


def pretrained_student(workdir, step):
  c = mae_b16.get_config("runlocal=True")
  setup = assembly.make_setup(c, None, sharding.make_mesh(c.mesh), 2, 0)
  abstract, shardings = step_lib.state_shardings(setup)
  _, state = ckpt_lib.restore(ckpt_lib.manager(workdir), abstract, shardings, step=step)
  return jax.device_get(state.params["student"])


def finetune_config(spec):
  c = finetune_b16.get_config("runlocal=True")
  c.init_from = spec
  c.total_steps, c.checkpoint_every, c.async_checkpoint = 1, 1, False
  c.optim.lr, c.optim.weight_decay = 0.0, 0.0  # the step leaves the loaded student as it is
  return c


@pytest.mark.parametrize("step", [None, 1])
def test_finetune_starts_from_the_pretrained_student(tmp_path, mae_workdir, step):
  spec = mae_workdir if step is None else f"{mae_workdir}:{step}"
  result = train.train_and_evaluate(finetune_config(spec), str(tmp_path / "ft"))
  want = pretrained_student(mae_workdir, 2 if step is None else step)
  got = jax.device_get(result.state.params["student"])
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(x, y)
  # and the features the classifier computes are the pretrained student's
  images = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)
  student = result.setup.model_student()
  feats_got = student.apply({"params": got}, images, None)[0]
  feats_want = student.apply({"params": want}, images, None)[0]
  np.testing.assert_allclose(feats_got, feats_want, atol=1e-6)
  # and the run measured its top-1 on the held-out digits
  results = json.load(open(tmp_path / "ft" / "results.json"))
  assert results["step"] == 1 and 0.0 <= results["final"]["eval/top1"] <= 1.0


def test_position_embedding_is_resized_bicubically():
  rng = np.random.default_rng(0)
  pe = rng.normal(size=(1, 1 + 4 * 4, 8)).astype(np.float32)
  out = resize.resize_pos_embedding(pe, (1, 1 + 8 * 8, 8))
  assert out.shape == (1, 65, 8)
  np.testing.assert_array_equal(out[0, 0], pe[0, 0])  # CLS kept
  import torch
  ref = torch.nn.functional.interpolate(
      torch.from_numpy(pe[0, 1:].reshape(4, 4, 8).transpose(2, 0, 1))[None], size=(8, 8),
      mode="bicubic", align_corners=False)[0].numpy().transpose(1, 2, 0).reshape(64, 8)
  np.testing.assert_allclose(out[0, 1:], ref, atol=1e-5)


def test_missing_tensor_and_bad_shape_are_named():
  src = init_from.Source("workdir", "/x", 1)
  student = {"a": {"w": np.zeros((2, 3), np.float32)}, "b": np.zeros((4,), np.float32)}
  with pytest.raises(init_from.InitFromError, match="lacks 1 student tensors: b"):
    init_from.merge(student, {"a/w": np.ones((2, 3))}, src)
  with pytest.raises(init_from.InitFromError, match=r"a/w has shape \(3, 2\)"):
    init_from.merge(student, {"a/w": np.ones((3, 2)), "b": np.ones(4)}, src)
  tree, unused = init_from.merge(student, {"a/w": np.ones((2, 3)), "b": np.ones(4),
                                           "decoder/x": np.ones(1)}, src)
  assert unused == ["decoder/x"] and tree["a"]["w"].dtype == np.float32


def test_bad_init_from_fails_in_one_line_before_writing(tmp_path, mae_workdir):
  workdir = tmp_path / "never"
  from safetensors.torch import save_file  # pylint: disable=import-outside-toplevel
  wide = str(tmp_path / "vit_wide.safetensors")  # width 48: not the nano student's 32
  save_file(random_timm_sd(d=48, m=96), wide)
  for spec, words in [("/no/such/dir", "no such file"), (f"{mae_workdir}:7", "no checkpoint at step 7"),
                      (wide, "has shape")]:
    r = subprocess.run(
        [sys.executable, "-m", "mim_jax.main", "--config", "configs/finetune_b16.py:runlocal=True",
         "--workdir", str(workdir), f"--config.init_from={spec}"], capture_output=True, text=True,
        cwd=os.path.dirname(os.path.dirname(__file__)), timeout=300)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and words in last, r.stderr[-2000:]
    assert not workdir.exists()


# --------------------------------------------------------------------------------------------
# Released PyTorch formats: features of the loaded student equal the source model's (float32).
# --------------------------------------------------------------------------------------------
import argparse  # noqa: E402

import torch  # noqa: E402
from flax import traverse_util  # noqa: E402

from mim_jax.models.vit import ViT  # noqa: E402
from tests.test_export import max_err, nchw, timm_convention_forward  # noqa: E402

ATOL = 1e-5


def tiny_student(**kw):
  return ViT(patch=4, width=32, depth=2, num_heads=2, mlp_dim=64, image_size=16, **kw)


def student_template(vit):
  return nn_unbox(vit.init(jax.random.key(0), np.zeros((1, 16, 16, 3), np.float32))["params"])


def nn_unbox(tree):
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  return jax.device_get(nn.meta.unbox(tree))


def features(vit, params, x):
  return np.asarray(vit.apply({"params": params}, x)[0])


def random_timm_sd(depth=2, d=32, m=64, n=16, layer_scale=True, seed=0):
  g = torch.Generator().manual_seed(seed)
  r = lambda *s: torch.randn(*s, generator=g) * 0.2
  sd = {"cls_token": r(1, 1, d), "pos_embed": r(1, n + 1, d),
        "patch_embed.proj.weight": r(d, 3, 4, 4), "patch_embed.proj.bias": r(d),
        "norm.weight": 1 + r(d), "norm.bias": r(d), "head.weight": r(10, d), "head.bias": r(10)}
  for i in range(depth):
    p = f"blocks.{i}."
    sd.update({p + "norm1.weight": 1 + r(d), p + "norm1.bias": r(d),
               p + "attn.qkv.weight": r(3 * d, d), p + "attn.qkv.bias": r(3 * d),
               p + "attn.proj.weight": r(d, d), p + "attn.proj.bias": r(d),
               p + "norm2.weight": 1 + r(d), p + "norm2.bias": r(d),
               p + "mlp.fc1.weight": r(m, d), p + "mlp.fc1.bias": r(m),
               p + "mlp.fc2.weight": r(d, m), p + "mlp.fc2.bias": r(d)})
    if layer_scale:
      sd[p + "ls1.gamma"], sd[p + "ls2.gamma"] = r(d), r(d)
  return sd


def load(spec, vit):
  return init_from.load_student(spec, student_template(vit), vit)


def test_timm_safetensors_features_equal(tmp_path):
  from safetensors.torch import save_file  # pylint: disable=import-outside-toplevel
  sd = random_timm_sd()
  path = str(tmp_path / "vit_tiny.safetensors")
  save_file(sd, path)
  vit = tiny_student(posemb="learned", layer_scale=0.1)
  x = np.random.default_rng(1).normal(size=(2, 16, 16, 3)).astype(np.float32)
  _, want, _ = timm_convention_forward(sd, nchw(x), 2, 2, "token")
  assert max_err(features(vit, load(path, vit), x), want) < ATOL


def test_mae_pth_features_equal_and_pretraining_parts_dropped(tmp_path, caplog):
  vit = tiny_student()  # MAE's fixed sin-cos embedding
  sd = random_timm_sd(layer_scale=False)
  sd["pos_embed"] = torch.from_numpy(layout.position_embedding({}, vit))[None]
  sd.pop("head.weight"), sd.pop("head.bias")
  sd.update({"mask_token": torch.zeros(1, 1, 32), "decoder_embed.weight": torch.ones(8, 32),
             "decoder_pred.bias": torch.ones(48)})
  path = str(tmp_path / "mae_pretrain.pth")
  torch.save({"model": sd, "args": argparse.Namespace(model="mae_vit_tiny")}, path)
  x = np.random.default_rng(2).normal(size=(2, 16, 16, 3)).astype(np.float32)
  _, want, _ = timm_convention_forward(sd, nchw(x), 2, 2, "token")
  caplog.set_level("INFO")
  assert max_err(features(vit, load(path, vit), x), want) < ATOL
  dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
  assert len(dropped) == 1 and "decoder_embed.weight" in dropped[0] and "mask_token" in dropped[0]
  # a learned (non sin-cos) embedding cannot go into a fixed sin-cos student
  sd["pos_embed"] = sd["pos_embed"] + 0.1
  torch.save({"model": sd}, path)
  with pytest.raises(init_from.InitFromError, match="posemb='learned'"):
    load(path, vit)


def test_transformers_vit_features_equal(tmp_path):
  import transformers  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, image_size=16, patch_size=4,
                               layer_norm_eps=1e-6)
  model = transformers.ViTModel(cfg, add_pooling_layer=False).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn_like(p) * 0.1)
  model.save_pretrained(str(tmp_path))
  vit = tiny_student(posemb="learned")
  x = np.random.default_rng(3).normal(size=(2, 16, 16, 3)).astype(np.float32)
  with torch.no_grad():
    want = model(pixel_values=nchw(x)).last_hidden_state
  assert max_err(features(vit, load(str(tmp_path), vit), x), want) < ATOL


def test_transformers_vit_mae_features_equal(tmp_path):
  import transformers  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  cfg = transformers.ViTMAEConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, image_size=16, patch_size=4,
                                  layer_norm_eps=1e-6, mask_ratio=0.0, decoder_hidden_size=16,
                                  decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
                                  decoder_intermediate_size=32)
  model = transformers.ViTMAEForPreTraining(cfg).eval()
  emb = model.vit.embeddings  # transformers' own MAE sin-cos (left at zeros when constructed)
  emb.patch_embeddings.projection._is_hf_initialized = False  # pylint: disable=protected-access
  emb.initialize_weights()
  assert float(emb.position_embeddings.abs().max()) > 0.5
  with torch.no_grad():
    for n, p in model.named_parameters():
      if "position_embeddings" not in n:
        p.add_(torch.randn_like(p) * 0.1)
  model.save_pretrained(str(tmp_path))
  vit = tiny_student()
  x = np.random.default_rng(4).normal(size=(2, 16, 16, 3)).astype(np.float32)
  with torch.no_grad():  # noise in increasing order keeps the patches in place
    want = model.vit(pixel_values=nchw(x), noise=torch.arange(16.0).expand(2, 16)).last_hidden_state
  assert max_err(features(vit, load(str(tmp_path), vit), x), want) < ATOL


def random_beit(shared, seed=0):
  """A transformers BeitModel (BEiT's student: no absolute embedding, relative position bias
  shared or per block, layer scale), every weight perturbed so that none is at its init."""
  import transformers  # pylint: disable=import-outside-toplevel
  torch.manual_seed(seed)
  cfg = transformers.BeitConfig(
      hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
      image_size=16, patch_size=4, use_absolute_position_embeddings=False,
      use_relative_position_bias=not shared, use_shared_relative_position_bias=shared,
      layer_scale_init_value=0.1, use_mean_pooling=False, layer_norm_eps=1e-6)
  model = transformers.BeitModel(cfg, add_pooling_layer=False).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn_like(p) * 0.1)
  return model


def beit_features(model, x):
  with torch.no_grad():
    return model(pixel_values=nchw(x)).last_hidden_state


def beit_release_sd(model):
  """The BEiT repository's names for a transformers BeitModel's weights (q/v biases, fused qkv
  weight, gamma_1/2, rel_pos_bias), plus the pretraining parts a released .pth carries."""
  w = {k: v.clone() for k, v in model.state_dict().items()}
  sd = {"cls_token": w.pop("embeddings.cls_token"),
        "mask_token": torch.zeros(1, 1, 32), "lm_head.weight": torch.ones(8, 32),
        "norm.weight": w.pop("layernorm.weight"), "norm.bias": w.pop("layernorm.bias")}
  for kind in ("weight", "bias"):
    sd[f"patch_embed.proj.{kind}"] = w.pop(f"embeddings.patch_embeddings.projection.{kind}")
  if "shared_position_bias.relative_position_bias_table" in w:
    sd["rel_pos_bias.relative_position_bias_table"] = w.pop(
        "shared_position_bias.relative_position_bias_table")
    sd["rel_pos_bias.relative_position_index"] = torch.zeros(17, 17, dtype=torch.long)
  for i in range(2):
    h, b = f"layers.{i}.", f"blocks.{i}."
    sd[b + "attn.qkv.weight"] = torch.cat(
        [w.pop(f"{h}attention.{n}_proj.weight") for n in "qkv"], 0)
    sd[b + "attn.q_bias"] = w.pop(h + "attention.q_proj.bias")
    sd[b + "attn.v_bias"] = w.pop(h + "attention.v_proj.bias")
    sd[b + "gamma_1"], sd[b + "gamma_2"] = w.pop(h + "lambda_1"), w.pop(h + "lambda_2")
    table = h + "relative_position_bias.relative_position_bias_table"
    if table in w:
      sd[b + "attn.relative_position_bias_table"] = w.pop(table)
      sd[b + "attn.relative_position_index"] = torch.zeros(17, 17, dtype=torch.long)
    for theirs, ours in (("attention.o_proj", "attn.proj"), ("layernorm_before", "norm1"),
                         ("layernorm_after", "norm2"), ("mlp.fc1", "mlp.fc1"),
                         ("mlp.fc2", "mlp.fc2")):
      for kind in ("weight", "bias"):
        sd[f"{b}{ours}.{kind}"] = w.pop(f"{h}{theirs}.{kind}")
  assert not [k for k in w if not k.endswith("relative_position_index")], sorted(w)
  return sd


def beit_student(rel_pos):
  return tiny_student(posemb="none", rel_pos=rel_pos, layer_scale=0.1, weight_init="beit")


@pytest.mark.parametrize("shared,rel_pos", [(True, "shared"), (True, "per_layer"),
                                            (False, "per_layer")])
def test_beit_pth_and_transformers_dir_features_equal(tmp_path, shared, rel_pos, caplog):
  """BEiT's .pth and a transformers BeitModel directory load to the same features; a shared
  table fills every block's table of a per-layer student (BEiT's start of fine-tuning)."""
  model = random_beit(shared)
  x = np.random.default_rng(5).normal(size=(2, 16, 16, 3)).astype(np.float32)
  want = beit_features(model, x)
  vit = beit_student(rel_pos)
  pth = str(tmp_path / "beit.pth")
  torch.save({"model": beit_release_sd(model), "args": argparse.Namespace(model="beit")}, pth)
  caplog.set_level("INFO")
  params = load(pth, vit)
  assert max_err(features(vit, params, x), want) < ATOL
  if rel_pos == "per_layer" and shared:
    np.testing.assert_array_equal(params["rel_pos_bias_0"]["table"],
                                  params["rel_pos_bias_1"]["table"])
  dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
  assert len(dropped) == 1 and "lm_head.weight" in dropped[0] and "mask_token" in dropped[0]
  model.save_pretrained(str(tmp_path / "hf"))
  assert max_err(features(vit, load(str(tmp_path / "hf"), vit), x), want) < ATOL


def test_per_layer_tables_do_not_fit_a_shared_student(tmp_path):
  path = str(tmp_path / "beit.pth")
  torch.save({"model": beit_release_sd(random_beit(shared=False))}, path)
  with pytest.raises(init_from.InitFromError, match="lacks 1 student tensors: rel_pos_bias/table"):
    load(path, beit_student("shared"))


def test_maskalign_pth_keeps_the_student_and_drops_heads_and_teacher_once(tmp_path, caplog):
  """MaskAlign's released .pth: `model` holds the student (timm names), the distillation heads
  and weights, and the whole frozen teacher (clip_model.*); the teacher is named once."""
  vit = tiny_student()
  sd = random_timm_sd(layer_scale=False)
  sd["pos_embed"] = torch.from_numpy(layout.position_embedding({}, vit))[None]
  sd.pop("head.weight"), sd.pop("head.bias")
  sd.update({f"distill_heads.{i}.weight": torch.ones(16, 32) for i in range(2)})
  sd["distill_weights"] = torch.eye(2)
  sd.update({f"clip_model.vision_model.encoder.layers.{i}.mlp.fc1.weight": torch.ones(4, 4)
             for i in range(12)})
  path = str(tmp_path / "maskalign_b16_clip_b16.pth")
  torch.save({"model": sd, "epoch": 199}, path)
  x = np.random.default_rng(6).normal(size=(2, 16, 16, 3)).astype(np.float32)
  _, want, _ = timm_convention_forward(sd, nchw(x), 2, 2, "token")
  caplog.set_level("INFO")
  assert max_err(features(vit, load(path, vit), x), want) < ATOL
  dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
  assert len(dropped) == 1
  assert "clip_model.* (12 tensors)" in dropped[0] and "distill_weights" in dropped[0]
  assert dropped[0].count("clip_model") == 1


@pytest.mark.slow
def test_maskdistill_workdir_fine_tunes_with_its_table_per_block(tmp_path, tiny_vit_teacher_dir):
  """A MaskDistill student (shared relative position bias, layer scale, no absolute embedding)
  starts the fine-tune recipe: every block's table is the pretrained shared one, the rest equal."""
  from configs import finetune, maskdistill_b16_clip_b16  # pylint: disable=import-outside-toplevel
  c = maskdistill_b16_clip_b16.get_config("runlocal=True")
  c.teacher.spec = tiny_vit_teacher_dir
  c.total_steps, c.checkpoint_every, c.async_checkpoint = 2, 2, False
  pre = train.train_and_evaluate(c, str(tmp_path / "md"))
  want = jax.device_get(pre.state.params["student"])
  ft = finetune.get_config("recipe=maskdistill,runlocal=True")
  ft.init_from = str(tmp_path / "md")
  ft.total_steps, ft.checkpoint_every, ft.async_checkpoint = 1, 1, False
  ft.optim.lr, ft.optim.weight_decay = 0.0, 0.0
  got = jax.device_get(train.train_and_evaluate(ft, str(tmp_path / "ft")).state.params["student"])
  shared = want.pop("rel_pos_bias")["table"]
  assert float(np.abs(shared).max()) > 0  # the pretraining moved it off its zero init
  for i in range(2):
    np.testing.assert_array_equal(got.pop(f"rel_pos_bias_{i}")["table"], shared)
  want.pop("mask_token")  # dense inpainting's token: the classifier has none
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_linear_probe_starts_from_the_pretrained_student(tmp_path, mae_workdir):
  from configs import linear_probe as probe_config  # pylint: disable=import-outside-toplevel
  c = probe_config.get_config("runlocal=True")
  c.init_from, c.total_steps, c.async_checkpoint = mae_workdir, 1, False
  result = train.train_and_evaluate(c, str(tmp_path / "lin"))
  got = jax.device_get(result.state.params["student"])
  want = pretrained_student(mae_workdir, 2)
  for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(x, y)


# --------------------------------------------------------------------------------------------
# A CLIP vision tower as the student's initialisation (the analysis paper's Figure 8 runs).
# --------------------------------------------------------------------------------------------
CLIP_TINY = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, patch_size=4,
                 image_size=16, num_hidden_layers=2, projection_dim=8, layer_norm_eps=1e-5)


def random_clip(directory, act, with_projection=True, seed=0):
  """A random-weight transformers CLIP vision tower saved to `directory` (LayerNorms moved off
  their identity so that pre_layrnorm's port is tested too)."""
  import transformers  # pylint: disable=import-outside-toplevel
  from mim_jax.teachers import testing  # pylint: disable=import-outside-toplevel
  torch.manual_seed(seed)
  cls = (transformers.CLIPVisionModelWithProjection if with_projection
         else transformers.CLIPVisionModel)
  model = cls(transformers.CLIPVisionConfig(attn_implementation="eager", hidden_act=act,
                                            **CLIP_TINY)).eval()
  testing.perturb_layer_norms(model, seed)
  model.save_pretrained(str(directory))
  return model.vision_model if with_projection else model  # (the vision tower's outputs)


@pytest.mark.parametrize("act,with_projection", [("quick_gelu", True), ("gelu", False)])
def test_clip_vision_tower_features_equal(tmp_path, caplog, act, with_projection):
  """The CLIP-initialised student computes CLIP's features on the student's own input
  normalisation: every token after the last block, and after the final norm."""
  from mim_jax.teachers import testing  # pylint: disable=import-outside-toplevel
  from mim_jax.teachers.teacher import DEFAULT_MEAN_STD  # pylint: disable=import-outside-toplevel
  vision = random_clip(tmp_path, act, with_projection)
  vit = tiny_student(posemb="learned", act=act, ln_eps=1e-5, pre_norm=True)
  caplog.set_level("INFO")
  params = load(str(tmp_path), vit)
  x = testing.student_images(2, 16, seed=5)
  out, aux = vit.apply({"params": params}, x)
  with torch.no_grad():
    ref = vision(torch.from_numpy(testing.teacher_pixels(x, *DEFAULT_MEAN_STD["clip"])))
    final = vision.post_layernorm(ref.last_hidden_state)
  assert max_err(aux["blocks"][-1], ref.last_hidden_state) < ATOL
  assert max_err(out, final) < ATOL
  assert max_err(out[:, 0], ref.pooler_output) < ATOL
  dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
  assert dropped == (["init_from: dropped (not part of the student): proj/kernel"]
                     if with_projection else [])


def test_clip_tables_start_at_zero_and_gains_at_one(tmp_path):
  """A BEiT-style fine-tuning student (per-block relative position tables, layer scale) from a
  CLIP tower computes CLIP's features: what CLIP lacks starts at the value that changes nothing."""
  from mim_jax.teachers import testing  # pylint: disable=import-outside-toplevel
  plain = tiny_student(posemb="learned", act="quick_gelu", ln_eps=1e-5, pre_norm=True)
  beit = tiny_student(posemb="learned", act="quick_gelu", ln_eps=1e-5, pre_norm=True,
                      rel_pos="per_layer", layer_scale=0.1)
  random_clip(tmp_path, "quick_gelu")
  x = testing.student_images(2, 16, seed=6)
  params = load(str(tmp_path), beit)
  assert float(np.abs(params["rel_pos_bias_1"]["table"]).max()) == 0.0
  assert np.all(params["block0"]["ls1"] == 1.0)
  assert max_err(features(beit, params, x), features(plain, load(str(tmp_path), plain), x)) < ATOL


@pytest.mark.parametrize("student,named", [
    (dict(posemb="learned"), "act='gelu', ln_eps=1e-06, pre_norm=False"),
    (dict(posemb="learned", act="quick_gelu", ln_eps=1e-5), "pre_norm=False"),
    (dict(act="quick_gelu", ln_eps=1e-5, pre_norm=True), "posemb='sincos'")])
def test_clip_tower_into_a_student_that_cannot_represent_it_is_refused(tmp_path, student, named):
  random_clip(tmp_path, "quick_gelu")
  with pytest.raises(init_from.InitFromError) as e:
    load(str(tmp_path), tiny_student(**student))
  message = str(e.value)
  assert "cannot represent this CLIP vision tower" in message and named in message
  assert "\n" not in message and "--config.student." in message


def test_a_released_tower_by_name_comes_from_the_local_cache_only(tmp_path, monkeypatch):
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty cache: never the network
  with pytest.raises(init_from.InitFromError) as e:
    init_from.check("clip_b16")
  assert str(e.value).startswith("init_from 'clip_b16': ") and "\n" not in str(e.value)
  assert "openai/clip-vit-base-patch16" in str(e.value)
