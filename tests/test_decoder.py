"""MAE decoder: unshuffle puts tokens back, order of visible tokens does not matter, drop edge."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mim_jax import masking
from mim_jax.models import layers
from mim_jax.models.decoder import Decoder, unshuffle

GRID, N = (4, 4), 16


def test_unshuffle_restores_original_positions():
  masks = masking.random_masks(jax.random.key(3), 3, N, 0.75)
  ids_keep = np.asarray(masks.ids_keep)
  # Each visible token carries its own patch index (+1, so 0 can mark the mask token).
  visible = jnp.asarray(ids_keep[..., None] + 1.0)
  out = np.asarray(unshuffle(visible, jnp.zeros((1,)), masks.ids_restore))[..., 0]
  mask = np.asarray(masks.mask)
  for b in range(3):
    for i in range(N):
      assert out[b, i] == (0.0 if mask[b, i] else i + 1.0)
  assert sorted(np.nonzero(mask[0] == 0)[0].tolist()) == sorted(ids_keep[0].tolist())


def test_unshuffle_with_extra_encoder_tokens():
  # Robust MAE's mid-depth tokens: the encoder returns visible + the first m masked patches
  # (in shuffle order); the same ids_restore still places all of them.
  masks = masking.random_masks(jax.random.key(4), 2, N, 0.75)
  shuffle = np.argsort(np.asarray(masks.ids_restore), axis=1)
  seen = shuffle[:, :6]  # 4 visible + 2 inserted
  out = np.asarray(unshuffle(jnp.asarray(seen[..., None] + 1.0), jnp.zeros((1,)),
                             masks.ids_restore))[..., 0]
  for b in range(2):
    expected = np.zeros(N)
    expected[seen[b]] = seen[b] + 1.0
    np.testing.assert_array_equal(out[b], expected)


def small_decoder(**kw):
  return Decoder(grid=GRID, out_dim=4 * 4 * 3, width=16, depth=1, num_heads=2, mlp_dim=32, **kw)


def init(decoder, n_visible=4):
  """The decoder's own initialisation (jitted)."""
  x = jnp.zeros((2, 1 + n_visible, 8))
  restore = jnp.tile(jnp.arange(N)[None], (2, 1))
  return nn.unbox(jax.jit(decoder.init)(jax.random.key(0), x, restore))["params"]


def random_params(decoder, n_visible=4, seed=0):
  """Params of the right shapes filled with N(0, 0.5) numpy draws: no init to compile (the
  random-number code of a jitted init is slow to compile on CPU)."""
  x = jnp.zeros((2, 1 + n_visible, 8))
  restore = jnp.tile(jnp.arange(N)[None], (2, 1))
  shapes = nn.unbox(jax.eval_shape(decoder.init, jax.random.key(0), x, restore))["params"]
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(0.5 * rng.normal(size=s.shape), s.dtype), shapes)


@functools.partial(jax.jit, static_argnames=("decoder", "train"))
def apply(decoder, params, x, ids_restore, train=False, seed=0):
  """Jitted forward (eager flax is slow on a busy CPU); compiled once per (decoder, train)."""
  return decoder.apply({"params": params}, x, ids_restore, train=train,
                       rngs={"dropout": jax.random.key(seed)})


def test_shapes_params_and_cls_dropped():
  dec = small_decoder()
  params = init(dec)
  assert params["embed"]["kernel"].shape == (8, 16)
  assert params["pred"]["kernel"].shape == (16, 48)
  assert params["mask_token"].shape == (16,)
  assert "pos_embedding" not in params  # fixed sin-cos, not learned
  np.testing.assert_array_equal(params["embed"]["bias"], 0.0)
  masks = masking.random_masks(jax.random.key(1), 2, N, 0.75)
  x = jax.random.normal(jax.random.key(2), (2, 5, 8))
  assert apply(dec, params, x, masks.ids_restore).shape == (2, N, 48)


def test_output_follows_patches_not_encoder_order():
  # The same visible patches fed in two different orders (with the matching ids_restore) must
  # give the same prediction at every original position: fails if unshuffling is wrong.
  dec = small_decoder()
  params = random_params(dec)
  rng = np.random.default_rng(0)
  tokens = rng.normal(size=(1, N, 8)).astype(np.float32)  # one token per original patch
  cls = rng.normal(size=(1, 1, 8)).astype(np.float32)
  visible = np.array([[9, 2, 14, 5]])
  masked = np.setdiff1d(np.arange(N), visible[0])[None]

  def run(order):
    shuffle = np.concatenate([visible[:, order], masked], axis=1)
    restore = np.argsort(shuffle, axis=1)
    x = np.concatenate([cls, tokens[:, visible[0, order]]], axis=1)
    return np.asarray(apply(dec, params, jnp.asarray(x), jnp.asarray(restore)))

  a, b = run([0, 1, 2, 3]), run([3, 1, 0, 2])
  np.testing.assert_allclose(a, b, atol=1e-5)
  # ...and the order matters only through positions: swapping which patch a token sits at
  # changes the output.
  shuffle = np.concatenate([visible[:, [1, 0, 2, 3]], masked], axis=1)
  x = np.concatenate([cls, tokens[:, visible[0]]], axis=1)
  c = np.asarray(apply(dec, params, jnp.asarray(x), jnp.asarray(np.argsort(shuffle, axis=1))))
  assert np.abs(a - c).max() > 1e-3


def test_position_embedding_is_maes():
  # With no blocks, a masked patch's prediction is pred(LN(mask_token + pos[i])).
  dec = Decoder(grid=GRID, out_dim=3, width=16, depth=0, num_heads=2, mlp_dim=32)
  params = random_params(dec)
  restore = jnp.tile(jnp.arange(N)[None], (2, 1))
  x = jax.random.normal(jax.random.key(5), (2, 5, 8))
  out = apply(dec, params, x, restore)
  pos = layers.posemb_sincos_2d(GRID, 16, cls_token=True)
  h = params["mask_token"] + pos[1 + 7]
  h = (h - h.mean()) / jnp.sqrt(h.var() + 1e-6) * params["norm"]["scale"] + params["norm"]["bias"]
  expected = h @ params["pred"]["kernel"] + params["pred"]["bias"]
  np.testing.assert_allclose(out[0, 7], expected, atol=1e-5)


def test_attention_dropout_only_in_training():
  dec = small_decoder(attn_drop=0.3)
  params = random_params(dec)
  masks = masking.random_masks(jax.random.key(1), 2, N, 0.75)
  x = jax.random.normal(jax.random.key(2), (2, 5, 8))
  run = lambda train, seed: apply(dec, params, x, masks.ids_restore, train, seed)
  np.testing.assert_allclose(run(False, 0), run(False, 1))  # eval: no dropout
  trained = run(True, 0)
  assert np.abs(trained - run(False, 0)).max() > 1e-4
  assert np.abs(trained - run(True, 1)).max() > 1e-4  # a fresh draw per rng
