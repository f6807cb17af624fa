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


def _tree():
  z = lambda *s: jnp.ones(s)
  block = lambda: {"attn": {"qkv_kernel": z(4, 3, 2, 2)}, "ln1": {"scale": z(4)}}
  return {"student": {"patch_embed": {"kernel": z(2, 2, 3, 4)}, "cls": z(1, 1, 4),
                      **{f"block{i}": block() for i in range(12)}},
          "head": {"kernel": z(4, 10), "bias": z(10)}}


def _changed(patterns):
  """{path: whether one AdamW step with optim.frozen=patterns moved the leaf}."""
  import jax  # pylint: disable=import-outside-toplevel
  c = optim_config(frozen=tuple(patterns), weight_decay=0.0)
  tx = optim.make_optimizer(c, optim.make_schedule(c, total_steps=10, warmup_steps=0,
                                                   global_batch=256))
  params = _tree()
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
  return {"/".join(str(k.key) for k in path): bool(jnp.any(u != 0))
          for path, u in jax.tree_util.tree_leaves_with_path(updates)}


def test_frozen_takes_parameter_path_patterns():
  moved = _changed(["student/block[0-5]/.*", "student/patch_embed"])
  assert not moved["student/block0/attn/qkv_kernel"] and not moved["student/block5/ln1/scale"]
  assert moved["student/block6/attn/qkv_kernel"] and moved["student/block11/ln1/scale"]
  assert not moved["student/patch_embed/kernel"]  # a leading part of the path freezes below it
  assert moved["student/cls"] and moved["head/kernel"]
  # "block1" must not freeze block10 / block11: a pattern matches whole path parts
  moved = _changed(["student/block1"])
  assert not moved["student/block1/ln1/scale"] and moved["student/block10/ln1/scale"]
  # the top-level group names work as before (the linear probe's "student")
  moved = _changed(["student"])
  assert not any(v for k, v in moved.items() if k.startswith("student/"))
  assert moved["head/kernel"] and moved["head/bias"]


@pytest.mark.parametrize("pattern,message", [
    ("student/blok[0-5]/.*", "matches no parameter"), ("student/block[0-5", "not a regular")])
def test_frozen_pattern_that_freezes_nothing_is_refused(pattern, message):
  with pytest.raises(ValueError, match=message):
    _changed([pattern])


def test_mu_dtype_stores_adams_first_moment_in_bf16():
  """optim.mu_dtype="bfloat16": AdamW's first moment is stored in bf16 (the second moment and
  the updates stay float32) and the update is within bf16's rounding of the float32 one;
  another optimizer's config has no such key."""
  import jax  # pylint: disable=import-outside-toplevel
  params = {"w": jnp.linspace(-1.0, 1.0, 64).reshape(8, 8)}
  grads = {"w": jnp.cos(jnp.arange(64.0)).reshape(8, 8)}
  runs = {}
  for mu in ("float32", "bfloat16"):
    c = optim_config(mu_dtype=mu)
    tx = optim.make_optimizer(c, optim.make_schedule(c, total_steps=10, warmup_steps=0,
                                                     global_batch=256))
    state = tx.init(params)
    for _ in range(3):
      updates, state = tx.update(grads, state, params)
    moments = [s for s in jax.tree.leaves(state, is_leaf=lambda x: hasattr(x, "mu"))
               if hasattr(s, "mu")]
    assert moments[0].mu["w"].dtype == jnp.dtype(mu)
    assert moments[0].nu["w"].dtype == jnp.float32 and updates["w"].dtype == jnp.float32
    runs[mu] = updates["w"]
  diff = float(jnp.abs(runs["bfloat16"] - runs["float32"]).max())
  assert 0 < diff < 1e-2 * float(jnp.abs(runs["float32"]).max())
  # LARS / SGD have no such moment: their configs carry no such key (an override is refused
  # as unknown), and switching a config to them removes it
  from mim_jax import defaults  # pylint: disable=import-outside-toplevel
  assert "mu_dtype" not in defaults.base("linear_probe").optim
  adamw = defaults.base("maskalign")
  assert adamw.optim.mu_dtype == "float32"
  defaults.use_optimizer(adamw, "sgd")
  assert "mu_dtype" not in adamw.optim
