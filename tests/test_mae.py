"""MAE objective: pixel targets and loss against numpy by hand, dataset statistics, a short run."""
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mim_jax import masking, optim, sharding, step
from mim_jax.objectives import mae
from mim_jax.data.normalization import STUDENT_MEAN, STUDENT_STD
from mim_jax.tools import dataset_stats

P = 4  # patch size of the hand-made images: 8x8 images -> 4 patches of 48 values


def np_patchify(x, p):
  """Independent of layers.patchify: explicit loops, pixels (row, column, channel) per patch."""
  b, h, w, _ = x.shape
  out = [[x[i, r:r + p, c:c + p, :].reshape(-1) for r in range(0, h, p) for c in range(0, w, p)]
         for i in range(b)]
  return np.asarray(out)


def np_targets(images, norm_pix, global_norm, stats):
  x = images.astype(np.float64) * np.asarray(STUDENT_STD) + np.asarray(STUDENT_MEAN)
  if global_norm == "global_rgb":
    x = (x - stats["rgb_mean"]) / stats["rgb_std"]
  x = np_patchify(x, P)
  if global_norm == "global_patch":
    x = (x - stats["patch_mean"]) / stats["patch_std"]
  if norm_pix:
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, ddof=1, keepdims=True)  # torch's .var(): unbiased
    x = (x - mean) / np.sqrt(var + 1e-6)
  return x


def np_masked_mse(pred, target, mask):
  per_patch = ((pred.astype(np.float64) - target) ** 2).mean(-1)
  return (per_patch * mask).sum() / mask.sum()


@pytest.fixture(scope="module")
def stats_file(tmp_path_factory):
  rng = np.random.default_rng(1)
  batches = [rng.normal(size=(b, 8, 8, 3)).astype(np.float32) for b in (3, 1, 4)]
  stats = dataset_stats.image_stats(batches, P)
  path = str(tmp_path_factory.mktemp("stats") / "stats.npz")
  dataset_stats.save(path, stats)
  return path, batches


def mae_config(variant="nano/4", **obj):
  c = mae.default_config()
  c.update(obj)
  return ml_collections.ConfigDict(dict(
      student=dict(variant=variant, drop_path=0.0, posemb="sincos", rel_pos="none",
                   layer_scale=None, weight_init="mae", remat="none"), objective=c,
      mask=dict(kind="random", ratio=0.75), data=dict(image_size=8), precision="float32"))


@pytest.mark.parametrize("norm_pix,global_norm", [
    (True, "none"), (False, "none"), (True, "global_rgb"), (True, "global_patch"),
    (False, "global_patch")])
def test_loss_by_hand(stats_file, norm_pix, global_norm):
  path, _ = stats_file
  rng = np.random.default_rng(0)
  images = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
  pred = rng.normal(size=(2, 4, 48)).astype(np.float32)
  mask = np.array([[1, 0, 1, 1], [0, 1, 1, 0]], np.float32)
  config = mae_config(norm_pix=norm_pix, global_norm=global_norm,
                      stats_path=None if global_norm == "none" else path)
  masks = types.SimpleNamespace(mask=jnp.asarray(mask))
  loss, metrics = mae.loss_fn({"pred": jnp.asarray(pred)}, None, masks,
                              {"image": jnp.asarray(images)}, config)
  stats = dict(np.load(path))
  expected = np_masked_mse(pred, np_targets(images, norm_pix, global_norm, stats), mask)
  assert float(loss) == pytest.approx(expected, rel=1e-5)
  assert float(metrics["loss/recon"]) == float(loss)


def test_default_target_is_maes_public_one():
  # global_rgb with the ImageNet constants = per-patch norm of the normalised input itself.
  images = np.random.default_rng(2).normal(size=(2, 8, 8, 3)).astype(np.float32)
  target = mae.pixel_targets(jnp.asarray(images), P, global_norm="global_rgb",
                             stats=mae.target_stats(mae_config().objective))
  expected = np_patchify(images.astype(np.float64), P)
  expected = (expected - expected.mean(-1, keepdims=True)) / np.sqrt(
      expected.var(-1, ddof=1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(target, expected, atol=2e-5)


def test_dataset_stats_on_a_synthetic_stream(stats_file):
  path, batches = stats_file
  stats = dict(np.load(path))
  pixels = np.concatenate(batches).astype(np.float64) * STUDENT_STD + STUDENT_MEAN
  np.testing.assert_allclose(stats["rgb_mean"], pixels.reshape(-1, 3).mean(0), rtol=1e-6)
  np.testing.assert_allclose(stats["rgb_std"], pixels.reshape(-1, 3).std(0), rtol=1e-6)
  patches = np_patchify(pixels, P).reshape(-1, 48)
  np.testing.assert_allclose(stats["patch_mean"], patches.mean(0), rtol=1e-5)
  np.testing.assert_allclose(stats["patch_std"], patches.std(0), rtol=1e-5)
  assert int(stats["num_images"]) == 8 and int(stats["patch"]) == P
  with pytest.raises(ValueError, match="a 2x2 RGB patch has 12"):
    mae.pixel_targets(jnp.zeros((1, 8, 8, 3)), 2, global_norm="global_patch", stats=stats)


def test_config_errors(tmp_path):
  with pytest.raises(ValueError, match="needs objective.stats_path"):
    mae.make_model(mae_config(global_norm="global_patch"))
  with pytest.raises(ValueError, match="asks for 4 mid-level mask tokens, but only 3 of 4"):
    mae.make_model(mae_config(mid_mask_ratio=1.0, mid_mask_depth=1))
  config = mae_config(mid_mask_ratio=0.5, mid_mask_depth=2)
  with pytest.raises(ValueError, match="not a block of the 2-block student"):
    mae.make_model(config)
  config.mask.ratio = 0.5
  config.objective.mid_mask_depth = 1
  assert mae.make_model(config).mid_mask_count == 2
  bad = tmp_path / "bad.npz"
  np.savez(bad, rgb_mean=np.zeros(3))
  with pytest.raises(ValueError, match="lacks"):
    mae.make_model(mae_config(global_norm="global_rgb", stats_path=str(bad)))


def test_mid_level_mask_tokens_are_the_first_masked_patches():
  config = mae_config(mid_mask_ratio=0.25, mid_mask_depth=1)
  config.data.image_size = 16
  config.objective.decoder.update(width=16, depth=1, heads=2, mlp_dim=32)
  model = mae.make_model(config)
  assert model.mid_mask_count == 4  # 16 patches: 4 visible, 4 inserted, 8 only in the decoder
  masks = masking.random_masks(jax.random.key(0), 2, 16, 0.75)
  images = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  # Random params of the model's shapes: no init to compile (slow for RNG code on CPU).
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(2), images, masks))["params"]
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape), s.dtype), shapes)
  pred = jax.jit(model.apply)({"params": params}, images, masks)["pred"]
  assert "mid_mask_token" in params["student"]

  @jax.jit
  def by_hand(params):
    shuffle = jnp.argsort(masks.ids_restore, axis=1)
    latent, _ = model.student.apply({"params": params["student"]}, images, masks.ids_keep,
                                    mid_ids=shuffle[:, 4:8], mid_depth=1)
    return latent, model.decoder.apply({"params": params["decoder"]}, latent, masks.ids_restore)

  latent, expected = by_hand(params)
  assert latent.shape == (2, 1 + 4 + 4, 32)
  np.testing.assert_allclose(pred, expected, atol=1e-6)


def train_config():
  c = mae_config(variant="nano/4")
  c.data.image_size = 16
  # The robust ingredients on: drop edge, mid-level mask tokens.
  c.objective.decoder.update(width=32, depth=1, heads=2, mlp_dim=64, attn_drop=0.1)
  c.objective.update(mid_mask_ratio=0.25, mid_mask_depth=1)
  c.seed = 0
  c.optim = ml_collections.ConfigDict(dict(
      name="adamw", lr=2e-3, min_lr=0.0, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.05,
      schedule="constant", clip_norm=None))
  return c


def test_short_run_lowers_the_loss_and_compiles_once():
  config = train_config()
  schedule = optim.make_schedule(config.optim, total_steps=16, warmup_steps=0, global_batch=8)
  setup = step.Setup(config=config, model=mae.make_model(config), objective=mae,
                     tx=optim.make_optimizer(config.optim, schedule), schedule=schedule,
                     mesh=sharding.make_mesh({"data": -1}))
  state = step.init_state(setup, jax.random.key(0))
  batch = {"image": jax.random.normal(jax.random.key(1), (8, 16, 16, 3))}
  run = step.jit_train_step(setup, {"image": batch["image"]})
  losses = []
  for _ in range(16):
    state, metrics = run(state, None, batch)
    losses.append(float(metrics["loss"]))
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-4:]) < 0.9 * np.mean(losses[:4]), losses
  assert run.jitted._cache_size() == 1


@pytest.mark.parametrize("precision,stream,want", [
    ("bfloat16", "auto", jnp.bfloat16), ("float32", "auto", jnp.float32),
    ("bfloat16", "float32", jnp.float32)])
def test_the_decoder_streams_as_the_student_does(precision, stream, want):
  """The pixel decoder's blocks take the student's `student.stream_dtype` ("auto": the
  matmuls' dtype); its prediction is float32 whatever the stream."""
  from configs import mae_b16  # pylint: disable=import-outside-toplevel
  config = mae_b16.get_config("runlocal=True")
  config.precision, config.student.stream_dtype = precision, stream
  model = mae.make_model(config)
  assert model.decoder.stream_dtype == want and model.student.stream_dtype == want
  x = jnp.zeros((2, 1 + 4, model.student.width))
  ids_restore = jnp.tile(jnp.arange(model.student.num_patches)[None], (2, 1))
  params = nn.unbox(model.decoder.init(jax.random.key(0), x, ids_restore))
  pred, inter = model.decoder.apply(params, x, ids_restore, capture_intermediates=True)
  assert pred.dtype == jnp.float32
  assert inter["intermediates"]["block0"]["__call__"][0][0].dtype == want
