"""`mim_jax.teachers.load`: refusals that name what they refuse, and resolution of names."""
import dataclasses
import json
import os
import shutil

import jax
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from transformers import ViTConfig, ViTModel

from mim_jax import teachers
from mim_jax.teachers import CheckpointError, testing

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
             patch_size=8, image_size=32)


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("vit")
  torch.manual_seed(0)
  ViTModel(ViTConfig(**SMALL)).save_pretrained(directory)
  return directory


def copy_of(src, dst):
  shutil.copytree(src, dst)
  return dst


def edit_config(directory, **changes):
  path = os.path.join(directory, "config.json")
  with open(path) as f:
    config = json.load(f)
  config.update(changes)
  with open(path, "w") as f:
    json.dump(config, f)


def edit_weights(directory, drop=(), add=None):
  path = os.path.join(directory, "model.safetensors")
  weights = load_file(path)
  for key in drop:
    del weights[key]
  weights.update(add or {})
  save_file(weights, path)


def test_loads(vit_dir):
  teacher = teachers.load(str(vit_dir))
  assert teacher.name == str(vit_dir)
  assert teacher.params["block1"]["attn"]["qkv_kernel"].shape == (32, 3, 2, 16)
  assert hash(teacher) == hash(teachers.load(str(vit_dir)))


def test_missing_weight_is_named(vit_dir, tmp_path):
  d = copy_of(vit_dir, tmp_path / "ckpt")
  edit_weights(d, drop=["encoder.layer.1.attention.attention.key.bias"])
  with pytest.raises(CheckpointError, match=r"missing weights.*encoder\.layer\.1\.attention"
                                            r"\.attention\.key\.bias"):
    teachers.load(str(d))


def test_unexpected_weight_is_named(vit_dir, tmp_path):
  d = copy_of(vit_dir, tmp_path / "ckpt")
  edit_weights(d, add={"encoder.layer.0.attention.rel_pos_bias": np.zeros(3, np.float32)})
  with pytest.raises(CheckpointError, match=r"unexpected weights.*encoder\.layer\.0\.attention"
                                            r"\.rel_pos_bias"):
    teachers.load(str(d))


def test_wrong_shape_is_named(vit_dir, tmp_path):
  d = copy_of(vit_dir, tmp_path / "ckpt")
  edit_weights(d, add={"layernorm.bias": np.zeros(33, np.float32)})
  with pytest.raises(CheckpointError, match=r"'layernorm\.bias' has shape \(33,\)"):
    teachers.load(str(d))


def test_unknown_model_type_is_named(vit_dir, tmp_path):
  d = copy_of(vit_dir, tmp_path / "ckpt")
  edit_config(d, model_type="swin")
  with pytest.raises(CheckpointError, match="model_type 'swin'"):
    teachers.load(str(d))


def test_unknown_architecture_is_named(vit_dir, tmp_path):
  d = copy_of(vit_dir, tmp_path / "ckpt")
  edit_config(d, architectures=["ViTForMaskedImageModeling"])
  with pytest.raises(CheckpointError, match="architecture 'ViTForMaskedImageModeling'"):
    teachers.load(str(d))


@pytest.mark.parametrize("field,value", [("hidden_act", "silu"), ("num_channels", 1),
                                         ("image_size", [32, 48]), ("layer_scale_init", 0.1)])
def test_unsupported_config_value_is_named(vit_dir, tmp_path, field, value):
  d = copy_of(vit_dir, tmp_path / "ckpt")
  edit_config(d, **{field: value})
  with pytest.raises(CheckpointError, match=f"config field '{field}'"):
    teachers.load(str(d))


def test_ignored_fields_are_accepted(vit_dir, tmp_path):
  """Fields that do not matter to a frozen teacher load, and change nothing: the same
  architecture, normalisation, weights and outputs as the checkpoint without them."""
  d = copy_of(vit_dir, tmp_path / "ckpt")
  edit_config(d, encoder_stride=32, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
              torch_dtype="float32", _name_or_path="x", id2label={"0": "a"})
  plain, loaded = teachers.load(str(vit_dir)), teachers.load(str(d))
  assert dataclasses.replace(loaded, name=plain.name) == plain  # arch, mean, std, dtype
  assert jax.tree.structure(loaded.params) == jax.tree.structure(plain.params)
  for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(plain.params)):
    np.testing.assert_array_equal(a, b)
  images = testing.student_images(2, 32)
  want, got = plain(images, attn_layers=(0, 1)), loaded(images, attn_layers=(0, 1))
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b)


def test_preprocessor_config_sets_mean_std(vit_dir, tmp_path):
  d = copy_of(vit_dir, tmp_path / "ckpt")
  with open(os.path.join(d, "preprocessor_config.json"), "w") as f:
    json.dump({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}, f)
  teacher = teachers.load(str(d))
  assert teacher.mean == (0.5, 0.5, 0.5) and teacher.std == (0.25, 0.25, 0.25)
  images = testing.student_images(1, 32)
  x = np.asarray(teacher.preprocess(images))
  pixels = images * teachers.STUDENT_STD + teachers.STUDENT_MEAN
  np.testing.assert_allclose(x, (pixels - 0.5) / 0.25, atol=1e-5, rtol=0)


def test_no_weights_is_a_clear_error(vit_dir, tmp_path):
  d = copy_of(vit_dir, tmp_path / "ckpt")
  os.remove(os.path.join(d, "model.safetensors"))
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    teachers.load(str(d))


# ---- names resolved through the Hugging Face cache -----------------------------------------
@pytest.fixture
def hf_home(tmp_path, monkeypatch):
  home = tmp_path / "hf_home"
  home.mkdir()
  monkeypatch.setenv("HF_HOME", str(home))
  monkeypatch.delenv("HF_HUB_CACHE", raising=False)
  return home


def place_in_cache(hub, repo_id, source, files=None):
  """The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<hash>/...}."""
  repo = hub / ("models--" + repo_id.replace("/", "--"))
  snapshot = repo / "snapshots" / "0123456789abcdef"
  snapshot.mkdir(parents=True)
  (repo / "refs").mkdir()
  (repo / "refs" / "main").write_text("0123456789abcdef")
  for name in files or os.listdir(source):
    shutil.copy(os.path.join(source, name), snapshot / name)


@pytest.mark.parametrize("name,repo_id", [("clip_b16", "openai/clip-vit-base-patch16"),
                                          ("clip_l14", "openai/clip-vit-large-patch14"),
                                          ("dino_b16", "facebook/dino-vitb16")])
def test_known_name_missing_from_cache_says_how_to_place_it(hf_home, name, repo_id):
  with pytest.raises(FileNotFoundError) as err:
    teachers.load(name)
  message = str(err.value)
  assert f"huggingface-cli download {repo_id}" in message
  assert str(hf_home / "hub") in message and "model.safetensors" in message
  assert "\n" not in message  # one error line


def test_known_name_resolves_through_the_cache(hf_home, vit_dir):
  place_in_cache(hf_home / "hub", "facebook/dino-vitb16", vit_dir)
  teacher = teachers.load("dino_b16")
  assert teacher.name == "dino_b16" and teacher.kind == "vit" and teacher.grid == 4


def test_hf_hub_cache_wins_over_hf_home(hf_home, vit_dir, tmp_path, monkeypatch):
  hub = tmp_path / "elsewhere"
  place_in_cache(hub, "facebook/dino-vitb16", vit_dir)
  monkeypatch.setenv("HF_HUB_CACHE", str(hub))
  assert teachers.load("dino_b16").grid == 4


def test_cached_config_without_weights_says_how_to_place_them(hf_home, vit_dir):
  place_in_cache(hf_home / "hub", "openai/clip-vit-base-patch16", vit_dir, ["config.json"])
  with pytest.raises(FileNotFoundError, match="lacks config.json or model.safetensors"):
    teachers.load("clip_b16")


def test_unknown_name(hf_home):
  with pytest.raises(FileNotFoundError, match="neither a checkpoint directory nor a known name"):
    teachers.load("clip_h14")


def test_random_teacher_has_the_known_shape():
  arch = teachers.KNOWN["clip_l14"].arch
  assert (arch.image_size, arch.patch, arch.width, arch.depth) == (224, 14, 1024, 24)
  small = teachers.Arch(patch=14, grid=16, width=32, depth=1, num_heads=2, mlp_dim=64,
                        act="quick_gelu", ln_eps=1e-5, patch_bias=False, pre_norm=True,
                        proj_dim=8)
  teacher = teachers.random_teacher("clip", small).for_student(224, 16)
  out = teacher.apply(teacher.params, testing.student_images(1, 224))
  assert out["final"].shape == (1, 197, 32) and out["embeds"].shape == (1, 8)


def test_read_weights_bfloat16_safetensors_without_torch(tmp_path, monkeypatch):
  """bfloat16 / float16 tensors read as float32 through JAX; torch is never imported."""
  import builtins  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from safetensors.flax import save_file  # pylint: disable=import-outside-toplevel
  from mim_jax.teachers import checkpoint_io  # pylint: disable=import-outside-toplevel
  values = np.array([1.0, -2.5, 3.140625], np.float32)  # exact in bfloat16
  save_file({"a": jnp.asarray(values, jnp.bfloat16), "b": jnp.asarray(values, jnp.float16),
             "ids": jnp.arange(3, dtype=jnp.int32)}, str(tmp_path / "model.safetensors"))
  real_import = builtins.__import__

  def no_torch(name, *args, **kwargs):
    if name == "torch" or name.startswith("torch."):
      raise ImportError("torch is not installed")
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", no_torch)
  weights = checkpoint_io.read_weights(str(tmp_path))
  for key in ("a", "b"):
    assert weights[key].dtype == np.float32
    np.testing.assert_array_equal(weights[key], values)
  np.testing.assert_array_equal(weights["ids"], [0, 1, 2])
