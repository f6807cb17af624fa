"""MR-MAE objective: mimic + reconstruction against numpy by hand, fusion, a short focused run."""
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mim_jax import masking, optim, sharding, step
from mim_jax.objectives import mrmae
from mim_jax.data.normalization import STUDENT_MEAN, STUDENT_STD


def np_ln(x, eps=1e-5):
  return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)


def np_recon(images, pred, mask, p=4):
  x = images.astype(np.float64)  # global_rgb with ImageNet stats: the normalised input itself
  b = x.shape[0]
  t = x.reshape(b, 2, p, 2, p, 3).transpose(0, 1, 3, 2, 4, 5).reshape(b, 4, p * p * 3)
  t = (t - t.mean(-1, keepdims=True)) / np.sqrt(t.var(-1, ddof=1, keepdims=True) + 1e-6)
  per_patch = ((pred - t) ** 2).mean(-1)
  return (per_patch * mask).sum() / mask.sum()


def mrmae_config(**obj):
  c = mrmae.default_config()
  c.update(obj)
  return ml_collections.ConfigDict(dict(
      student=dict(variant="nano/4", drop_path=0.0, posemb="sincos", rel_pos="none",
                   layer_scale=None, weight_init="mae", remat="none"), objective=c,
      mask=dict(kind="random", ratio=0.5), data=dict(image_size=8), precision="float32"))


@pytest.mark.parametrize("target_layer,norm,with_cls", [
    ("last", "ln", False), ("final", "none", False), ("last", "none", True)])
def test_loss_by_hand(target_layer, norm, with_cls):
  rng = np.random.default_rng(0)
  b, n_all, dt = 2, 4, 6
  hidden = tuple(rng.normal(size=(b, 1 + n_all, dt)) * 2 + 1 for _ in range(3))
  final = rng.normal(size=(b, 1 + n_all, dt))
  ids_keep = np.array([[3, 0], [1, 2]])
  mask = np.array([[0, 1, 1, 0], [1, 0, 0, 1]], np.float32)
  images = rng.normal(size=(b, 8, 8, 3)).astype(np.float32)
  mimic = rng.normal(size=(b, 3, dt)).astype(np.float32)
  pred = rng.normal(size=(b, n_all, 48)).astype(np.float32)
  config = mrmae_config(target_layer=target_layer, target_norm=norm, mimic_cls=with_cls,
                        mimic_weight=0.5, recon_weight=0.5)
  masks = types.SimpleNamespace(ids_keep=jnp.asarray(ids_keep), mask=jnp.asarray(mask),
                                ids_restore=jnp.zeros((b, n_all), jnp.int32))
  teacher_out = {"hidden_states": tuple(jnp.asarray(h, jnp.float32) for h in hidden),
                 "final": jnp.asarray(final, jnp.float32)}
  loss, metrics = mrmae.loss_fn({"mimic": jnp.asarray(mimic), "pred": jnp.asarray(pred)},
                                teacher_out, masks, {"image": jnp.asarray(images)}, config)

  feats = hidden[-1] if target_layer == "last" else final
  feats = np_ln(feats) if norm == "ln" else feats
  target = np.stack([np.concatenate([feats[i, :1], feats[i, 1:][ids_keep[i]]]) for i in range(b)])
  first = 0 if with_cls else 1
  expected_mimic = ((mimic[:, first:] - target[:, first:]) ** 2).mean()  # L2 over tokens x Dt
  expected_recon = np_recon(images, pred, mask)
  assert float(metrics["loss/mimic"]) == pytest.approx(expected_mimic, rel=1e-5)
  assert float(metrics["loss/recon"]) == pytest.approx(expected_recon, rel=1e-5)
  assert float(loss) == pytest.approx(0.5 * expected_mimic + 0.5 * expected_recon, rel=1e-5)


def test_grid_mismatch_is_refused():
  config = mrmae_config()
  masks = types.SimpleNamespace(ids_keep=jnp.zeros((1, 2), jnp.int32), mask=jnp.ones((1, 4)),
                                ids_restore=jnp.zeros((1, 4), jnp.int32))
  teacher_out = {"hidden_states": (jnp.zeros((1, 10, 6)),), "final": jnp.zeros((1, 10, 6))}
  with pytest.raises(ValueError, match="teacher has 9 patch tokens, student 4"):
    mrmae.loss_fn({"mimic": jnp.zeros((1, 3, 6)), "pred": jnp.zeros((1, 4, 48))}, teacher_out,
                  masks, {"image": jnp.zeros((1, 8, 8, 3))}, config)


def test_fusion_layers_derived_from_depth():
  def obj(**kw):
    return ml_collections.ConfigDict(dict(dict(num_fusion=3, fusion_layers=None), **kw))
  assert mrmae.fusion_indices(obj(), 12) == (3, 7, 11)
  assert mrmae.fusion_indices(obj(), 24) == (7, 15, 23)
  assert mrmae.fusion_indices(obj(), 32) == (9, 20, 31)
  assert mrmae.fusion_indices(obj(), 2) == (0, 1)
  assert mrmae.fusion_indices(obj(num_fusion=1), 12) == ()  # the last block alone: no fusion
  assert mrmae.fusion_indices(obj(fusion_layers=(-1, 0, 3)), 4) == (0, 3)
  assert mrmae.fusion_indices(obj(fusion_layers=()), 4) == ()
  with pytest.raises(ValueError, match="outside the student's 4 blocks"):
    mrmae.fusion_indices(obj(fusion_layers=(4,)), 4)
  with pytest.raises(ValueError, match="leave out the last block"):
    mrmae.fusion_indices(obj(fusion_layers=(3, 7, 11)), 24)
  with pytest.raises(ValueError, match="num_fusion must be >= 1"):
    mrmae.fusion_indices(obj(num_fusion=0), 12)


def test_fusion_sums_chosen_blocks_then_applies_the_final_norm(make_teacher):
  config = mrmae_config(fusion_layers=(0, 1))
  config.objective.decoder.update(width=16, depth=1, heads=2, mlp_dim=32)
  teacher = make_teacher(width=12, grid=2)
  model = mrmae.make_model(config, teacher)
  masks = masking.random_masks(jax.random.key(0), 2, 4, 0.5)
  images = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  # Random params of the model's shapes: no init to compile (slow for RNG code on CPU).
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(2), images, masks))["params"]
  assert "fusion_norm" not in shapes  # the student's own final norm normalises the sum
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape), s.dtype), shapes)


  @jax.jit  # one compilation for both forwards (compiling dominates on a busy CPU)
  def forward(params):
    _, aux = model.student.apply({"params": params["student"]}, images, masks.ids_keep)
    return model.apply({"params": params}, images, masks), aux

  out, aux = forward(params)
  assert out["mimic"].shape == (2, 3, 12) and out["pred"].shape == (2, 4, 48)
  x = np.asarray(aux["blocks"][0] + aux["blocks"][1], np.float64)
  ln = params["student"]["norm"]
  fused = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)
  fused = fused * ln["scale"] + ln["bias"]
  head = params["mimic_head"]
  np.testing.assert_allclose(out["mimic"], fused @ head["kernel"] + head["bias"], atol=1e-5)


@pytest.mark.parametrize("variant", ["L/16", "H/14"])
def test_deep_variants_train_every_block_and_the_final_norm(variant):
  """The shipped config at L/16 and H/14 (narrowed to width 16 on a 2x2 grid to run in seconds,
  depth kept): every student block and the final norm get a non-zero gradient of the loss."""
  from configs import mrmae_b16_clip_b16  # pylint: disable=import-outside-toplevel
  config = mrmae_b16_clip_b16.get_config(f"variant={variant}")
  patch = int(variant.split("/")[1])
  config.data.image_size = 2 * patch
  config.objective.decoder.update(width=16, depth=1, heads=2, mlp_dim=32)
  teacher = types.SimpleNamespace(width=8, depth=2)
  model = mrmae.make_model(config, teacher)
  depth = model.student.depth
  assert depth == {"L": 24, "H": 32}[variant[0]] and model.fusion_layers[-1] == depth - 1
  model = model.clone(student=model.student.clone(width=16, num_heads=2, mlp_dim=32))
  masks = masking.random_masks(jax.random.key(0), 2, 4, 0.5)
  images = jax.random.normal(jax.random.key(1), (2, 2 * patch, 2 * patch, 3))
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(2), images, masks))["params"]
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape), s.dtype), shapes)
  teacher_out = {"hidden_states": (jnp.asarray(rng.normal(size=(2, 5, 8)), jnp.float32),),
                 "final": jnp.zeros((2, 5, 8))}

  def loss(p):
    out = model.apply({"params": p}, images, masks)
    return mrmae.loss_fn(out, teacher_out, masks, {"image": images}, config)[0]

  grads = jax.grad(loss)(params)["student"]  # eager: compiling 32 blocks costs more
  norms = {name: float(optax.global_norm(g)) for name, g in grads.items()}
  names = [f"block{i}" for i in range(depth)] + ["norm"]
  assert not [n for n in names if norms[n] == 0.0], norms


def test_make_model_needs_a_teacher():
  with pytest.raises(ValueError, match="mimics a teacher"):
    mrmae.make_model(mrmae_config(), None)


def test_short_focused_run_lowers_the_loss_and_compiles_once(make_teacher):
  config = mrmae_config()  # 3 fused blocks of 2: (0, 1)
  config.data.image_size = 16
  config.mask.kind, config.mask.ratio = "focused", 0.75
  config.objective.decoder.update(width=32, depth=1, heads=2, mlp_dim=64)
  config.seed = 0
  config.optim = ml_collections.ConfigDict(dict(
      name="adamw", lr=2e-3, min_lr=0.0, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.05,
      schedule="constant", clip_norm=None))
  teacher = make_teacher(width=16, depth=2)
  t_params = teacher.params
  schedule = optim.make_schedule(config.optim, total_steps=16, warmup_steps=0, global_batch=8)
  setup = step.Setup(config=config, model=mrmae.make_model(config, teacher), objective=mrmae,
                     tx=optim.make_optimizer(config.optim, schedule), schedule=schedule,
                     mesh=sharding.make_mesh({"data": -1}), teacher=teacher)
  state = step.init_state(setup, jax.random.key(0))
  # Pixels in [0, 1] through the student normalisation, as the pipeline yields them.
  pixels = jax.random.uniform(jax.random.key(1), (8, 16, 16, 3))
  batch = {"image": (pixels - jnp.asarray(STUDENT_MEAN)) / jnp.asarray(STUDENT_STD)}
  run = step.jit_train_step(setup, {"image": batch["image"]})
  losses, mimic = [], []
  for _ in range(16):
    state, metrics = run(state, t_params, batch)
    losses.append(float(metrics["loss"]))
    mimic.append(float(metrics["loss/mimic"]))
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-4:]) < 0.9 * np.mean(losses[:4]), losses
  assert mimic[-1] < mimic[0], mimic
  assert run.jitted._cache_size() == 1
