"""Parity of the ViT teacher (transformers ViTModel, as DINO) with transformers, float32, 1e-5."""
import json
import os

import jax
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import ViTConfig, ViTForImageClassification, ViTModel

from mim_jax import teachers
from mim_jax.teachers import testing

ATOL = 1e-5  # float32 parity; never relaxed

# Real B/16 widths (2 blocks instead of 12 for speed), and a small one with another patch size,
# head count, activation and epsilon.
B16 = dict(hidden_size=768, num_hidden_layers=2, num_attention_heads=12, intermediate_size=3072,
           patch_size=16, image_size=224)
SMALL = dict(hidden_size=48, num_hidden_layers=3, num_attention_heads=3, intermediate_size=96,
             patch_size=8, image_size=32, layer_norm_eps=1e-6)
SMALL_NO_QKV_BIAS = dict(SMALL, qkv_bias=False, hidden_act="quick_gelu")


def make_vit(directory, seed=0, cls=ViTModel, **config):
  torch.manual_seed(seed)
  model = cls(ViTConfig(attn_implementation="eager", **config)).eval()
  testing.perturb_layer_norms(model, seed)
  model.save_pretrained(directory)
  return model


def reference(model, images, teacher):
  pixels = torch.from_numpy(testing.teacher_pixels(images, teacher.mean, teacher.std))
  with torch.no_grad():
    return model(pixels, output_hidden_states=True, output_attentions=True)


def assert_parity(teacher, model, batch=2, seed=1):
  images = testing.student_images(batch, teacher.image_size, seed)
  out = jax.jit(teacher.apply)(teacher.params, images)
  ref = reference(model, images, teacher)
  errs = testing.max_errors(out, ref.hidden_states, ref.last_hidden_state, ref.attentions[-1])
  assert max(errs.values()) < ATOL, errs
  np.testing.assert_array_equal(out["pooled"], out["final"][:, 0])
  return out


@pytest.mark.parametrize("config", [B16, SMALL, SMALL_NO_QKV_BIAS],
                         ids=["B16", "small", "small_no_qkv_bias"])
def test_parity_with_transformers(tmp_path, config):
  model = make_vit(tmp_path, **config)
  teacher = teachers.load(str(tmp_path))
  assert (teacher.kind, teacher.patch_size, teacher.image_size) == (
      "vit", config["patch_size"], config["image_size"])
  assert (teacher.width, teacher.depth, teacher.num_heads) == (
      config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"])
  assert teacher.mean == teachers.STUDENT_MEAN and teacher.std == teachers.STUDENT_STD
  out = assert_parity(teacher, model)
  n = (config["image_size"] // config["patch_size"]) ** 2 + 1
  assert len(out["hidden_states"]) == config["num_hidden_layers"] + 1
  assert out["attn"][config["num_hidden_layers"] - 1].shape == (
      2, config["num_attention_heads"], n, n)
  assert "embeds" not in out


def test_classification_checkpoint_with_vit_prefix(tmp_path):
  """ViTForImageClassification writes `vit.`-prefixed names and a head: both are handled."""
  model = make_vit(tmp_path, cls=ViTForImageClassification, num_labels=5, **SMALL)
  assert_parity(teachers.load(str(tmp_path)), model.vit)


def test_in_memory_names_and_pooler(tmp_path):
  """A state dict saved by hand uses transformers 5's in-memory names (q_proj, layers.i, ...)."""
  model = make_vit(tmp_path / "ref", **SMALL)
  os.makedirs(tmp_path / "raw")
  state = {"vit." + k: v.contiguous() for k, v in model.state_dict().items()}
  assert any(".q_proj." in k for k in state) and any(k.startswith("vit.pooler.") for k in state)
  save_file(state, str(tmp_path / "raw" / "model.safetensors"))
  with open(tmp_path / "ref" / "config.json") as f:
    config = json.load(f)
  with open(tmp_path / "raw" / "config.json", "w") as f:
    json.dump(config, f)
  assert_parity(teachers.load(str(tmp_path / "raw")), model)


def test_all_attention_layers_and_negative_indices(tmp_path):
  model = make_vit(tmp_path, **SMALL)
  teacher = teachers.load(str(tmp_path))
  images = testing.student_images(1, 32)
  out = teacher.apply(teacher.params, images, attn_layers=(0, -2, 2))
  ref = reference(model, images, teacher)
  assert sorted(out["attn"]) == [0, 1, 2]
  for i in range(3):
    np.testing.assert_allclose(out["attn"][i], ref.attentions[i].numpy(), atol=ATOL, rtol=0)
  with pytest.raises(ValueError, match="out of range"):
    teacher.apply(teacher.params, images, attn_layers=(3,))


def test_outputs_carry_no_gradient(tmp_path):
  make_vit(tmp_path, **SMALL)
  teacher = teachers.load(str(tmp_path))
  images = testing.student_images(1, 32)

  def loss(params, x):
    out = teacher.apply(params, x)
    return sum(jax.numpy.sum(h) for h in out["hidden_states"]) + out["final"].sum()

  g_params, g_images = jax.grad(loss, argnums=(0, 1))(teacher.params, images)
  assert all(float(np.abs(g).max()) == 0.0 for g in jax.tree.leaves(g_params))
  assert float(np.abs(g_images).max()) == 0.0


def test_for_student_upsamples_position_embedding_like_transformers(tmp_path):
  """A 4x4-grid teacher (patch 8, 32 px) under a /8 student at 48 px: grid 6x6, 48 px inputs,
  equal to transformers' `interpolate_pos_encoding=True` at 48 px."""
  model = make_vit(tmp_path, **SMALL)
  teacher = teachers.load(str(tmp_path)).for_student(48, 8)
  assert (teacher.grid, teacher.image_size) == (6, 48)
  images = testing.student_images(2, 48, seed=4)
  out = teacher.apply(teacher.params, images)
  pixels = torch.from_numpy(testing.teacher_pixels(images, teacher.mean, teacher.std))
  with torch.no_grad():
    ref = model(pixels, output_hidden_states=True, output_attentions=True,
                interpolate_pos_encoding=True)
  errs = testing.max_errors(out, ref.hidden_states, ref.last_hidden_state, ref.attentions[-1])
  assert max(errs.values()) < ATOL, errs


def test_teacher_is_a_static_jit_argument(tmp_path):
  make_vit(tmp_path, **SMALL)
  teacher = teachers.load(str(tmp_path))

  @jax.jit
  def run(params, images):
    return teacher.apply(params, images)["final"]

  run_static = jax.jit(lambda t, p, x: t.apply(p, x)["final"], static_argnums=0)
  images = testing.student_images(1, 32)
  np.testing.assert_array_equal(run(teacher.params, images),
                                run_static(teacher, teacher.params, images))
