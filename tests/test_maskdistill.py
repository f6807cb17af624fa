"""MaskDistill objective: targets and losses against numpy by hand, distillation as its r = 0
case, and a short training run through the one train step."""
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import maskdistill_b16_clip_b16
from configs.sweeps import maskdistill_norm_loss
from mim_jax import objectives, optim, sharding, step as step_lib
from mim_jax.data import block_mask
from mim_jax.objectives import maskdistill


# ---- numpy references, written from the paper's definitions ---------------------------------
def np_ln(x, eps=1e-5):
  return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)


def np_norm(x, kind):
  if kind == "ln":
    return np_ln(x)
  if kind == "bn":  # per channel over every token of the batch
    flat = x.reshape(-1, x.shape[-1])
    return (x - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-5)
  if kind == "l2":
    return x / np.linalg.norm(x, axis=-1, keepdims=True)
  return x


def np_token_loss(pred, target, kind, beta=1.0):
  d = pred - target
  if kind == "smooth_l1":
    a = np.abs(d)
    return np.where(a < beta, 0.5 * d * d / beta, a - 0.5 * beta).mean(-1)
  if kind == "mse":
    return (d * d).mean(-1)
  cos = (pred * target).sum(-1) / (np.linalg.norm(pred, axis=-1) *
                                   np.linalg.norm(target, axis=-1))
  return 1.0 - cos


def obj_config(**kw):
  c = maskdistill.default_config()
  c.update(kw)
  return ml_collections.ConfigDict({"objective": c})


@pytest.fixture(scope="module")
def arrays():
  rng = np.random.default_rng(0)
  b, n, d, depth = 2, 6, 5, 6
  hidden = tuple((rng.normal(size=(b, 1 + n, d)) * 3 + 1).astype(np.float32)
                 for _ in range(depth + 1))
  pred = rng.normal(size=(b, 1 + n, d)).astype(np.float32)
  mask = np.array([[1, 0, 0, 1, 1, 0], [0, 1, 0, 0, 0, 0]], np.float32)
  return hidden, pred, mask


@pytest.mark.parametrize("layers_kind,norm,loss,loss_on", [
    ("last", "ln", "smooth_l1", "masked"),  # the default
    ("last3", "bn", "smooth_l1", "masked"),
    ("last6", "none", "mse", "masked"),
    ("last", "l2", "cosine", "masked"),
    ("last", "ln", "smooth_l1", "all"),
])
def test_loss_by_hand(arrays, layers_kind, norm, loss, loss_on):
  hidden, pred, mask = arrays
  config = obj_config(target_layers=layers_kind, target_norm=norm, loss=loss, loss_on=loss_on)
  masks = types.SimpleNamespace(mask=jnp.asarray(mask))
  got, metrics = maskdistill.loss_fn({"pred": jnp.asarray(pred)}, {"hidden_states": hidden},
                                     masks, {}, config)
  k = {"last": 1, "last3": 3, "last6": 6}[layers_kind]
  h = np.mean([x.astype(np.float64) for x in hidden[-k:]], axis=0)  # the last k blocks
  target = np_norm(h, norm)[:, 1:]  # CLS is not in the loss
  per_token = np_token_loss(pred[:, 1:].astype(np.float64), target, loss)
  w = mask if loss_on == "masked" else np.ones_like(mask)
  expected = (per_token * w).sum() / w.sum()
  assert float(got) == pytest.approx(expected, rel=1e-5)
  visible = 1 - mask
  assert float(metrics["loss/visible"]) == pytest.approx(
      (per_token * visible).sum() / visible.sum(), rel=1e-5)


def test_masked_loss_ignores_visible_predictions(arrays):
  hidden, pred, mask = arrays
  masks = types.SimpleNamespace(mask=jnp.asarray(mask))
  config = obj_config()
  base, _ = maskdistill.loss_fn({"pred": jnp.asarray(pred)}, {"hidden_states": hidden}, masks,
                                {}, config)
  moved = pred.copy()
  moved[:, 0] += 5.0  # CLS
  moved[:, 1:][mask == 0] += 5.0  # visible patches
  got, _ = maskdistill.loss_fn({"pred": jnp.asarray(moved)}, {"hidden_states": hidden}, masks,
                               {}, config)
  assert float(got) == pytest.approx(float(base), rel=1e-6)


def test_options_are_checked(arrays):
  hidden, pred, mask = arrays
  masks = types.SimpleNamespace(mask=jnp.asarray(mask))
  for kw, match in [({"target_layers": "last12"}, "target_layers"), ({"loss": "l1"}, "loss"),
                    ({"loss_on": "some"}, "loss_on")]:
    with pytest.raises(ValueError, match=match):
      maskdistill.loss_fn({"pred": pred}, {"hidden_states": hidden}, masks, {}, obj_config(**kw))
  with pytest.raises(ValueError, match="needs 6 teacher blocks"):
    maskdistill.targets(hidden[:4], "last6", "ln")


def test_registry_config_and_sweep():
  assert objectives.get("maskdistill") is maskdistill
  c = maskdistill_b16_clip_b16.get_config()
  assert (c.mask.kind, c.mask.ratio, c.student.rel_pos, c.student.posemb) == (
      "block", 0.4, "shared", "none")
  assert optim.peak_lr(c.optim, c.batch_size) == pytest.approx(1.5e-3)
  assert (c.optim.b2, c.optim.clip_norm, c.student.layer_scale) == (0.999, 3.0, 0.1)
  assert tuple(c.data.crop_scale) == (0.2, 1.0)  # BEiT v2's command, the study's recipe
  assert maskdistill_b16_clip_b16.get_config("variant=L/16").student.layer_scale == 1e-5
  rows = maskdistill_norm_loss.sweep()
  assert {(r["objective.target_norm"], r["objective.loss"]) for r in rows} == {
      ("none", "mse"), ("l2", "cosine"), ("bn", "smooth_l1"), ("ln", "smooth_l1")}
  for row in rows:  # every override names an existing field with an accepted value
    for key, value in row.items():
      section, field = key.split(".")
      assert field in c[section]


# ---- a tiny teacher and a real model --------------------------------------------------------
def tiny_config(**objective):
  config = maskdistill_b16_clip_b16.get_config("runlocal=True")
  config.batch_size = 8
  config.optim.lr = 2e-3
  config.optim.min_lr = 2e-3
  config.objective.update(objective)
  return config


def test_ratio_zero_on_all_patches_is_distillation(make_teacher):
  """r = 0 with the loss on all patches: the dense student is the plain one, and the loss is
  feature distillation of every patch, computed here without the objective."""
  teacher = make_teacher()
  t_params = teacher.params
  config = tiny_config(loss_on="all")
  model = maskdistill.make_model(config, teacher)
  images = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
  masks = types.SimpleNamespace(mask=jnp.zeros((4, 16)))
  params = nn.unbox(model.init(jax.random.key(0), images, masks))["params"]
  params["head"]["dense"]["bias"] = jnp.full((48,), 0.3)  # make the head matter
  loss, _ = maskdistill.loss_fn(model.apply({"params": params}, images, masks),
                                teacher.apply(t_params, images), masks, {}, config)
  plain, _ = model.student.apply({"params": params["student"]}, images)  # no mask token at all
  head = params["head"]["dense"]
  pred = np.asarray(plain, np.float64) @ np.asarray(head["kernel"]) + np.asarray(head["bias"])
  target = np_ln(np.asarray(teacher.apply(t_params, images)["hidden_states"][-1], np.float64))
  expected = np_token_loss(pred[:, 1:], target[:, 1:], "smooth_l1").mean()
  assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_short_run_lowers_the_loss_without_recompiling(make_teacher, train_on_batch):
  teacher = make_teacher()
  config = tiny_config()
  mesh = sharding.make_mesh({"data": 2}, jax.devices()[:2])
  schedule = optim.make_schedule(config.optim, total_steps=12, warmup_steps=0,
                                 global_batch=config.batch_size)
  setup = step_lib.Setup(config=config, model=maskdistill.make_model(config, teacher),
                         objective=maskdistill, tx=optim.make_optimizer(config.optim, schedule),
                         schedule=schedule, mesh=mesh, teacher=teacher)
  student = setup.model_student()
  assert (student.rel_pos, student.posemb, student.weight_init) == ("shared", "none", "beit")
  state = step_lib.init_state(setup, jax.random.key(0))
  assert state.params["student"]["block0"]["ls1"][0] == pytest.approx(0.1)
  images = jax.random.normal(jax.random.key(1), (8, 16, 16, 3))
  mask = block_mask.block_masks(np.random.default_rng(0), 8, student.grid, config.mask.ratio)
  batch = {"image": images, "mask": jnp.asarray(mask)}
  put = sharding.batch_sharding(mesh, 4), sharding.batch_sharding(mesh, 2)
  batch = {"image": jax.device_put(images, put[0]), "mask": jax.device_put(batch["mask"], put[1])}
  losses, metrics, run = train_on_batch(setup, batch, teacher.params, 12, state)
  assert np.isfinite(losses).all()
  # a real (random-weight) teacher: the loss falls at every step here
  assert np.all(np.diff(losses) < 0) and losses[-1] < 0.9 * losses[0], losses
  assert float(metrics["mask_fraction"]) == pytest.approx(6 / 16)
  assert run.jitted._cache_size() == 1
