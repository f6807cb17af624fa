"""Parity of the CLIP vision teacher with transformers, float32, 1e-5 absolute."""
import jax
import numpy as np
import pytest
import torch
from transformers import (CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel,
                          CLIPVisionModelWithProjection)

from mim_jax import teachers
from mim_jax.teachers import testing

ATOL = 1e-5  # float32 parity; never relaxed
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Real widths of ViT-B/16 and ViT-L/14 (2 blocks instead of 12 / 24 for speed), and a small one.
B16 = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, patch_size=16,
           image_size=224, num_hidden_layers=2, projection_dim=512)
L14 = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, patch_size=14,
           image_size=224, num_hidden_layers=2, projection_dim=768)
SMALL = dict(hidden_size=48, intermediate_size=96, num_attention_heads=4, patch_size=8,
             image_size=32, num_hidden_layers=3, projection_dim=24, layer_norm_eps=1e-6)


def make_clip(directory, cls, seed=0, **config):
  torch.manual_seed(seed)
  model = cls(CLIPVisionConfig(attn_implementation="eager", **config)).eval()
  testing.perturb_layer_norms(model, seed)
  model.save_pretrained(directory)
  return model


def reference(vision_model, images, teacher, projection=None, **kwargs):
  """transformers' outputs, with post_layernorm applied to all tokens as our `final` is."""
  pixels = torch.from_numpy(testing.teacher_pixels(images, teacher.mean, teacher.std))
  with torch.no_grad():
    ref = vision_model(pixels, output_hidden_states=True, output_attentions=True, **kwargs)
    final = vision_model.post_layernorm(ref.last_hidden_state)
    embeds = projection(ref.pooler_output) if projection is not None else None
  return ref, final, embeds


def assert_parity(teacher, vision_model, projection=None, images=None, **kwargs):
  if images is None:
    images = testing.student_images(2, teacher.image_size, seed=1)
  out = jax.jit(teacher.apply)(teacher.params, images)
  ref, final, embeds = reference(vision_model, images, teacher, projection, **kwargs)
  errs = testing.max_errors(out, ref.hidden_states, final, ref.attentions[-1])
  errs["pooled"] = testing.max_abs_error(out["pooled"], ref.pooler_output)
  if projection is not None:
    errs["embeds"] = testing.max_abs_error(out["embeds"], embeds)
  else:
    assert "embeds" not in out
  assert max(errs.values()) < ATOL, errs
  return out


@pytest.mark.parametrize("config,act,with_projection", [
    (B16, "quick_gelu", True), (L14, "gelu", False), (L14, "quick_gelu", True),
    (SMALL, "gelu", True), (SMALL, "quick_gelu", False)],
    ids=["B16_quick_gelu_proj", "L14_gelu", "L14_quick_gelu_proj", "small_gelu_proj",
         "small_quick_gelu"])
def test_parity_with_transformers(tmp_path, config, act, with_projection):
  cls = CLIPVisionModelWithProjection if with_projection else CLIPVisionModel
  model = make_clip(tmp_path, cls, hidden_act=act, **config)
  teacher = teachers.load(str(tmp_path))
  assert teacher.kind == "clip" and teacher.mean == CLIP_MEAN and teacher.std == CLIP_STD
  assert (teacher.patch_size, teacher.image_size, teacher.width, teacher.depth,
          teacher.num_heads) == (config["patch_size"], config["image_size"],
                                 config["hidden_size"], config["num_hidden_layers"],
                                 config["num_attention_heads"])
  if with_projection:
    assert teacher.projection_dim == config["projection_dim"]
    assert_parity(teacher, model.vision_model, model.visual_projection)
  else:
    assert teacher.projection_dim == 0
    assert_parity(teacher, model)


def test_full_clip_model_checkpoint(tmp_path):
  """A CLIPModel checkpoint: vision tower and visual_projection are used, the text tower not."""
  torch.manual_seed(0)
  config = CLIPConfig(
      vision_config=dict(SMALL, hidden_act="quick_gelu"),
      text_config=dict(hidden_size=32, intermediate_size=64, num_attention_heads=2,
                       num_hidden_layers=1),
      projection_dim=16, attn_implementation="eager")
  model = CLIPModel(config).eval()
  testing.perturb_layer_norms(model, 0)
  model.save_pretrained(tmp_path)
  teacher = teachers.load(str(tmp_path))
  assert teacher.projection_dim == 16
  out = assert_parity(teacher, model.vision_model, model.visual_projection)
  pixels = torch.from_numpy(testing.teacher_pixels(
      testing.student_images(2, 32, seed=1), CLIP_MEAN, CLIP_STD))
  with torch.no_grad():
    features = model.get_image_features(pixel_values=pixels)
  features = getattr(features, "pooler_output", features)
  np.testing.assert_allclose(out["embeds"], features.numpy(), atol=ATOL, rtol=0)


def test_vision_model_without_projection_refuses_a_projection_weight(tmp_path):
  """Architecture CLIPVisionModel with a visual_projection in the file: named as unexpected."""
  model = make_clip(tmp_path / "proj", CLIPVisionModelWithProjection, **SMALL)
  model.config.architectures = ["CLIPVisionModel"]
  model.config.save_pretrained(tmp_path / "proj")
  with pytest.raises(teachers.CheckpointError, match="unexpected weights.*visual_projection"):
    teachers.load(str(tmp_path / "proj"))


def test_bf16_close_to_f32(tmp_path):
  """bfloat16 matmuls (float32 accumulation): loose tolerance, bf16 only (8-bit mantissa)."""
  make_clip(tmp_path, CLIPVisionModelWithProjection, **SMALL)
  f32 = teachers.load(str(tmp_path))
  bf16 = teachers.load(str(tmp_path), dtype="bfloat16")
  assert jax.tree.leaves(bf16.params)[0].dtype == jax.numpy.bfloat16
  images = testing.student_images(2, 32, seed=2)
  a = f32.apply(f32.params, images)
  b = bf16.apply(bf16.params, images)
  c = f32.apply(f32.params, images, dtype="bfloat16")  # f32 storage, bf16 matmuls
  for out in (b, c):
    for key in ("final", "embeds"):
      ref = np.asarray(a[key])
      err = np.abs(np.asarray(out[key], np.float32) - ref).max() / np.abs(ref).max()
      # bf16 rounds to ~3 significant digits; a few blocks compound it to ~1e-2 relative.
      assert err < 3e-2, (key, err)
    # A bf16 teacher runs wholly in bf16: its outputs are bf16 (the losses read them in f32).
    assert out["final"].dtype == jax.numpy.bfloat16
    assert {h.dtype for h in out["hidden_states"]} == {jax.numpy.dtype(jax.numpy.bfloat16)}
  assert a["final"].dtype == np.float32


def test_bf16_teacher_keeps_no_float32_activation(tmp_path):
  """Every layer of a bf16 teacher returns bf16 (residual stream, LayerNorms, attention, MLP,
  patch embedding): the float32 it keeps (LayerNorm and softmax statistics) lives inside
  those layers. A float32 teacher's layers all return float32."""
  make_clip(tmp_path, CLIPVisionModelWithProjection, **SMALL)
  images = testing.student_images(2, 32, seed=2)
  for dtype in ("bfloat16", "float32"):
    t = teachers.load(str(tmp_path), dtype=dtype)
    net = teachers.TeacherNet(t.arch, dtype=jax.numpy.dtype(dtype))
    _, state = net.apply({"params": t.params}, t.preprocess(images), attn_layers=(),
                         capture_intermediates=True, mutable=["intermediates"])
    outs = jax.tree.leaves(state["intermediates"])
    assert len(outs) > 20  # every submodule's output was captured
    assert {x.dtype for x in outs} == {jax.numpy.dtype(dtype)}, dtype


def test_for_student_l14_under_a_16_student_matches_transformers_interpolation(tmp_path):
  """L/14 at 224 has a 16x16 grid; a /16 student at 224 has 14x14: the teacher runs at 196 px
  with its position embedding resized 16x16 -> 14x14, which is what transformers computes with
  `interpolate_pos_encoding=True` on 196 px inputs (both resizes bicubic, torch's kernel)."""
  model = make_clip(tmp_path, CLIPVisionModelWithProjection, hidden_act="quick_gelu", **L14)
  teacher = teachers.load(str(tmp_path))
  assert teacher.grid == 16
  student_teacher = teacher.for_student(image_size=224, patch_size=16)
  assert (student_teacher.grid, student_teacher.image_size, student_teacher.patch_size) == (
      14, 196, 14)
  assert student_teacher.params["pos_embedding"].shape == (197, 1024)
  assert teacher.params["pos_embedding"].shape == (257, 1024)  # the original is untouched
  assert student_teacher.for_student(224, 16) is student_teacher

  images = testing.student_images(2, 224, seed=3)
  out = jax.jit(student_teacher.apply)(student_teacher.params, images)
  assert out["hidden_states"][-1].shape == (2, 197, 1024)
  pixels = torch.from_numpy(testing.teacher_pixels(images, CLIP_MEAN, CLIP_STD))
  pixels = torch.nn.functional.interpolate(pixels, size=(196, 196), mode="bicubic",
                                           align_corners=False)
  vm = model.vision_model
  with torch.no_grad():
    ref = vm(pixels, output_hidden_states=True, output_attentions=True,
             interpolate_pos_encoding=True)
    final = vm.post_layernorm(ref.last_hidden_state)
  errs = testing.max_errors(out, ref.hidden_states, final, ref.attentions[-1])
  assert max(errs.values()) < ATOL, errs


@pytest.mark.parametrize("image_size,patch_size,student", [
    (225, 16, "14.0625x14.0625"), ((224, 192), 16, "14x12"), (224, (16, 14), "14x16")])
def test_for_student_unresolvable_grid_names_both(tmp_path, image_size, patch_size, student):
  make_clip(tmp_path, CLIPVisionModel, **SMALL)
  teacher = teachers.load(str(tmp_path))
  with pytest.raises(ValueError, match=f"teacher grid 4x4 vs student grid {student}"):
    teacher.for_student(image_size, patch_size)
