"""Feature Distillation objective: loss against numpy by hand, config, a short training run."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import fd_b16_clip_b16
from mim_jax import objectives, optim, sharding, step as step_lib
from mim_jax.objectives import fd


def np_ln(x, eps=1e-5):
  return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)


def np_smooth_l1(d, beta):
  a = np.abs(d)
  return np.where(a < beta, 0.5 * d * d / beta, a - 0.5 * beta)


def obj_config(**kw):
  c = fd.default_config()
  c.update(kw)
  return ml_collections.ConfigDict({"objective": c})


@pytest.mark.parametrize("with_cls", [True, False])
def test_loss_by_hand(with_cls):
  rng = np.random.default_rng(0)
  b, l, d = 2, 5, 6
  final = (rng.normal(size=(b, l, d)) * 4 + 2).astype(np.float32)
  pred = (rng.normal(size=(b, l, d)) * 3).astype(np.float32)  # wide: both smooth-L1 branches
  teacher_out = {"final": final, "hidden_states": (final * 0 + 99.0,)}  # must not be read
  got, _ = fd.loss_fn({"pred": jnp.asarray(pred)}, teacher_out, None, {},
                      obj_config(with_cls=with_cls))
  d_ = pred.astype(np.float64) - np_ln(final.astype(np.float64))
  per = np_smooth_l1(d_, 2.0)
  expected = per.mean() if with_cls else per[:, 1:].mean()
  assert float(got) == pytest.approx(expected, rel=1e-5)
  assert np.abs(d_).max() > 2.0 and np.abs(d_).min() < 2.0


def test_registry_and_config():
  assert objectives.get("fd") is fd
  c = fd_b16_clip_b16.get_config()
  assert (c.mask.kind, c.objective.beta, c.student.drop_path) == ("none", 2.0, 0.2)
  assert optim.peak_lr(c.optim, c.batch_size) == pytest.approx(1.2e-3)
  assert (c.optim.b1, c.optim.b2, c.optim.weight_decay, c.optim.clip_norm) == (
      0.9, 0.999, 0.05, 3.0)
  local = fd_b16_clip_b16.get_config("runlocal=True")
  assert local.student.variant == "nano/4" and local.warmup_steps == 1


def test_short_run_lowers_the_loss_without_recompiling(make_teacher, train_on_batch):
  teacher = make_teacher(depth=2)
  config = fd_b16_clip_b16.get_config("runlocal=True")
  config.batch_size = 8
  config.optim.lr = config.optim.min_lr = 2e-3
  mesh = sharding.make_mesh({"data": 2}, jax.devices()[:2])
  schedule = optim.make_schedule(config.optim, total_steps=12, warmup_steps=0,
                                 global_batch=config.batch_size)
  setup = step_lib.Setup(config=config, model=fd.make_model(config, teacher), objective=fd,
                         tx=optim.make_optimizer(config.optim, schedule), schedule=schedule,
                         mesh=mesh, teacher=teacher)
  state = step_lib.init_state(setup, jax.random.key(0))
  assert "mask_token" not in state.params["student"]  # FD never masks
  images = jax.random.normal(jax.random.key(1), (8, 16, 16, 3))
  batch = {"image": jax.device_put(images, sharding.batch_sharding(mesh, 4))}
  losses, metrics, run = train_on_batch(setup, batch, teacher.params, 12, state)
  assert np.isfinite(losses).all()
  # a real (random-weight) teacher: the loss falls at every step here
  assert np.all(np.diff(losses) < 0) and losses[-1] < 0.8 * losses[0], losses
  assert run.jitted._cache_size() == 1
