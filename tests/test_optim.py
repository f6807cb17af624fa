"""Optimizer: weight-decay mask and the warmup-cosine schedule with the batch scaling rule."""
import jax.numpy as jnp
import ml_collections
import pytest

from mim_jax import optim


def optim_config(**kw):
  c = dict(name="adamw", base_lr=1.5e-4, min_lr=1e-5, b1=0.9, b2=0.95, weight_decay=0.05,
           schedule="cosine", clip_norm=None, lr=None)
  c.update(kw)
  return ml_collections.ConfigDict(c)


def test_schedule_warmup_peak_and_floor():
  sched = optim.make_schedule(optim_config(), total_steps=100, warmup_steps=10,
                              global_batch=1024)
  assert float(sched(0)) == 0.0
  assert float(sched(5)) == pytest.approx(3e-4, rel=1e-5)  # halfway up to 1.5e-4 * 4
  assert float(sched(10)) == pytest.approx(6e-4, rel=1e-5)
  assert float(sched(55)) == pytest.approx((6e-4 + 1e-5) / 2, rel=1e-4)  # cosine midpoint
  assert float(sched(100)) == pytest.approx(1e-5, rel=1e-4)


def test_decay_mask_only_kernels():
  params = {"student": {"cls": jnp.zeros((1, 1, 4)), "block0": {
      "attn": {"qkv_kernel": jnp.zeros((4, 3, 2, 2)), "qkv_bias": jnp.zeros((3, 2, 2)),
               "out_kernel": jnp.zeros((2, 2, 4))},
      "ln1": {"scale": jnp.ones(4), "bias": jnp.zeros(4)}, "ls1": jnp.ones(4)}},
      "alignment": jnp.eye(2), "adaptor0": {"Dense_0": {"kernel": jnp.zeros((4, 4))}}}
  mask = optim.decay_mask(params)
  assert mask["student"]["block0"]["attn"] == {"qkv_kernel": True, "qkv_bias": False,
                                              "out_kernel": True}
  assert mask["student"]["cls"] is False and mask["alignment"] is False
  assert mask["student"]["block0"]["ln1"] == {"scale": False, "bias": False}
  assert mask["adaptor0"]["Dense_0"]["kernel"] is True


def test_unknown_schedule():
  with pytest.raises(ValueError, match="Unknown schedule"):
    optim.make_schedule(optim_config(schedule="step"), total_steps=10, warmup_steps=1,
                        global_batch=8)
