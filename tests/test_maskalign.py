"""MaskAlign objective: weights, Dynamic Alignment, targets and losses against numpy by hand."""
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mim_jax.models.vit import ViT
from mim_jax.objectives import maskalign


def test_layer_weights():
  assert maskalign.layer_weights("top_k", 12, 5) == (0.0,) * 7 + (0.2,) * 5
  assert maskalign.layer_weights("out", 4) == (0, 0, 0, 1.0)
  assert maskalign.layer_weights("mean", 4) == (0.25,) * 4
  assert maskalign.layer_weights("mid", 6, 2, mid=2) == (0, 0, 1.0, 0, 0, 0)  # the code's mid2
  assert maskalign.layer_weights("linear_decay", 4) == pytest.approx((0, 1 / 6, 2 / 6, 3 / 6))
  assert maskalign.layer_weights("linear_decay", 1) == (1.0,)
  with pytest.raises(ValueError, match="mid_layer=6 is not a layer of the teacher's 6"):
    maskalign.layer_weights("mid", 6, mid=6)
  with pytest.raises(ValueError, match="Unknown layer weighting"):
    maskalign.layer_weights("best", 4)


def test_mid_weighting_uses_the_config_layer():
  from configs import maskalign_b16_clip_b16  # pylint: disable=import-outside-toplevel
  config = maskalign_b16_clip_b16.get_config("runlocal=True")
  config.objective.layer_weights, config.objective.mid_layer = "mid", 1
  model = maskalign.make_model(config, types.SimpleNamespace(width=8, depth=4))
  assert model.used_layers == (1,)


def np_smooth_l1(d, beta):
  a = np.abs(d)
  return np.where(a < beta, 0.5 * d ** 2 / beta, a - 0.5 * beta)


def np_ln(x, eps=1e-5):
  return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)


def obj_config(**kw):
  c = maskalign.default_config()
  c.update(kw)
  return ml_collections.ConfigDict({"objective": c})


@pytest.fixture
def arrays():
  rng = np.random.default_rng(0)
  b, n, d, t = 2, 6, 4, 3
  hidden = tuple(rng.normal(size=(b, 1 + n, d)).astype(np.float32) * 3 + 1 for _ in range(t + 1))
  ids_keep = np.array([[4, 0], [1, 5]], np.int32)
  preds = {j: rng.normal(size=(b, 3, d)).astype(np.float32) for j in (1, 2)}
  return hidden, ids_keep, preds


@pytest.mark.parametrize("norm,align_cls,loss", [
    ("ln", True, "smooth_l1"), ("ln", False, "l2"), ("bn", True, "l1"), ("none", True, "l2"),
    ("l2", True, "l1")])
def test_loss_by_hand(arrays, norm, align_cls, loss):
  hidden, ids_keep, preds = arrays
  config = obj_config(layer_weights="top_k", top_k=2, target_norm=norm, align_cls=align_cls,
                      loss=loss)
  masks = types.SimpleNamespace(ids_keep=jnp.asarray(ids_keep))
  total, metrics = maskalign.loss_fn({"preds": preds}, {"hidden_states": hidden}, masks, {},
                                     config)
  expected = 0.0
  for j in (1, 2):
    h = hidden[j + 1].astype(np.float64)  # hidden_states[0] is the embedding output
    if norm == "ln":
      h = np_ln(h)
    elif norm == "bn":  # statistics of every token, not only of those the loss reads
      h = (h - h.mean()) / np.sqrt(h.var() + 1e-5)
    elif norm == "l2":
      h = h / np.linalg.norm(h, axis=-1, keepdims=True)
    target = np.stack([np.concatenate([h[i, :1], h[i, 1:][ids_keep[i]]]) for i in range(2)])
    pred = preds[j].astype(np.float64)
    if not align_cls:
      pred, target = pred[:, 1:], target[:, 1:]
    d = pred - target
    per = {"smooth_l1": 2 * np_smooth_l1(d, 1.0), "l2": d ** 2, "l1": np.abs(d)}[loss].mean()
    assert float(metrics[f"loss/layer{j}"]) == pytest.approx(per, rel=1e-5)
    expected += 0.5 * per
  assert float(total) == pytest.approx(expected, rel=1e-5)


def tiny_model(alignment="dynamic", student_depth=4, teacher_depth=4, used=(2, 3),
               adaptor="linear"):
  return maskalign.MaskAlignModel(
      student=ViT.from_variant("micro/4", image_size=16).clone(depth=student_depth),
      teacher_width=8, teacher_depth=teacher_depth, used_layers=used, alignment=alignment,
      adaptor=adaptor)


def init(model):
  masks = types.SimpleNamespace(ids_keep=jnp.tile(jnp.arange(5)[None], (2, 1)))
  images = jnp.ones((2, 16, 16, 3))
  params = nn.unbox(model.init(jax.random.key(0), images, masks))["params"]
  return params, model.apply({"params": params}, images, masks)


def test_dynamic_alignment_init_and_fusion():
  params, out = init(tiny_model())
  np.testing.assert_allclose(params["alignment"], np.eye(4) + 0.01, atol=1e-7)
  assert set(out["preds"]) == {2, 3} and out["preds"][2].shape == (2, 6, 8)
  assert "adaptor0" not in params  # only layers with a loss weight get an adaptor
  params, _ = init(tiny_model(student_depth=2, teacher_depth=4))
  np.testing.assert_allclose(params["alignment"], np.full((4, 2), 0.5))


def test_fusion_is_weighted_sum_of_blocks():
  model = tiny_model()
  params, out = init(model)
  params["alignment"] = jnp.zeros((4, 4)).at[3, 1].set(2.0)
  masks = types.SimpleNamespace(ids_keep=jnp.tile(jnp.arange(5)[None], (2, 1)))
  images = jnp.ones((2, 16, 16, 3))
  pred = model.apply({"params": params}, images, masks)["preds"][3]
  _, aux = model.student.apply({"params": params["student"]}, images, masks.ids_keep)
  dense = params["adaptor3"]["Dense_0"]
  np.testing.assert_allclose(pred, 2.0 * aux["blocks"][1] @ dense["kernel"] + dense["bias"],
                             atol=1e-5)


def test_mlp_adaptor_hidden_width_is_the_students():
  params, out = init(tiny_model(adaptor="mlp", used=(3,)))  # student width 64, teacher 8
  mlp = params["adaptor3"]
  assert mlp["Dense_0"]["kernel"].shape == (64, 64) and mlp["Dense_1"]["kernel"].shape == (64, 8)
  assert out["preds"][3].shape == (2, 6, 8)


def test_layerwise_needs_equal_depths():
  params, out = init(tiny_model("layerwise"))
  assert "alignment" not in params
  with pytest.raises(ValueError, match="student 2 blocks vs teacher 4"):
    init(tiny_model("layerwise", student_depth=2))
