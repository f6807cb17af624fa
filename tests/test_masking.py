"""Tests of mim_jax.masking: exact counts, index consistency, restore order, sampling statistics."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mim_jax import masking

B, N = 6, 196  # a 14x14 grid


def _importance(seed: int, batch: int = B, n: int = N) -> jax.Array:
  return jax.random.uniform(jax.random.PRNGKey(seed), (batch, n), minval=0.01, maxval=1.0)


def _binary(seed: int, num_masked: int, batch: int = B, n: int = N) -> np.ndarray:
  rng = np.random.default_rng(seed)
  out = np.zeros((batch, n), np.uint8)
  for b in range(batch):
    out[b, rng.choice(n, num_masked, replace=False)] = 1
  return out


def _all_kinds(ratio: float = 0.75) -> dict[str, masking.Masks]:
  rng = jax.random.PRNGKey(0)
  nm = masking.block_num_masked(N, ratio)
  common = dict(batch=B, num_patches=N, ratio=ratio)
  return {
      "none": masking.make_masks("none", None, **common),
      "random": masking.make_masks("random", rng, **common),
      "attentive": masking.make_masks("attentive", rng, importance=_importance(1), **common),
      "focused": masking.make_masks("focused", None, importance=_importance(1), **common),
      "block": masking.make_masks("block", None, binary=_binary(2, nm), **common),
  }


def test_num_keep_is_maes_rule():
  assert masking.num_keep(196, 0.75) == 49
  assert masking.num_keep(196, 0.7) == 58  # int(58.8): truncation, not rounding
  assert masking.num_keep(196, 0.0) == 196
  assert masking.block_num_masked(196, 0.4) == 78
  with pytest.raises(ValueError):
    masking.num_keep(196, 1.5)


@pytest.mark.parametrize("kind", masking.KINDS)
def test_counts_and_consistency(kind):
  ratio = 0.75
  m = _all_kinds(ratio)[kind]
  n_keep = N if kind == "none" else (
      N - masking.block_num_masked(N, ratio) if kind == "block" else masking.num_keep(N, ratio))
  assert m.ids_keep.shape == (B, n_keep) and m.ids_keep.dtype == jnp.int32
  assert m.ids_restore.shape == (B, N) and m.ids_restore.dtype == jnp.int32
  assert m.mask.shape == (B, N) and m.mask.dtype == jnp.float32
  ids_keep, ids_restore, mask = map(np.asarray, m)
  np.testing.assert_array_equal(mask.sum(1), N - n_keep)
  assert set(np.unique(mask)) <= {0.0, 1.0}
  for b in range(B):
    assert len(np.unique(ids_keep[b])) == n_keep
    np.testing.assert_array_equal(np.sort(ids_restore[b]), np.arange(N))  # a permutation
    # Visible per ids_keep <=> mask == 0.
    np.testing.assert_array_equal(np.sort(ids_keep[b]), np.flatnonzero(mask[b] == 0))
    # ids_keep are the first n_keep of the shuffle that ids_restore inverts.
    np.testing.assert_array_equal(ids_restore[b, ids_keep[b]], np.arange(n_keep))


@pytest.mark.parametrize("kind", masking.KINDS)
def test_restore_puts_tokens_back(kind):
  """MAE's decoder path: visible tokens + mask tokens, gathered by ids_restore."""
  m = _all_kinds()[kind]
  d = 3
  x = jnp.arange(B * N * d, dtype=jnp.float32).reshape(B, N, d)
  visible = jnp.take_along_axis(x, m.ids_keep[..., None], axis=1)
  n_masked = N - m.ids_keep.shape[1]
  mask_tok = jnp.full((B, n_masked, d), -1.0)
  full = jnp.concatenate([visible, mask_tok], axis=1)
  restored = jnp.take_along_axis(full, m.ids_restore[..., None], axis=1)
  expect = jnp.where(m.mask[..., None] > 0, -1.0, x)
  np.testing.assert_array_equal(restored, expect)
  # With the real masked tokens appended, the input comes back exactly.
  hidden = jnp.take_along_axis(x, masking.masked_ids(m)[..., None], axis=1)
  restored = jnp.take_along_axis(jnp.concatenate([visible, hidden], 1), m.ids_restore[..., None], 1)
  np.testing.assert_array_equal(restored, x)


@pytest.mark.parametrize("kind", ["random", "attentive"])
def test_stochastic_kinds_differ_across_examples_and_keys(kind):
  imp = jnp.ones((B, N))  # identical rows: any difference comes from the rng
  kw = dict(batch=B, num_patches=N, ratio=0.75, importance=imp)
  a = masking.make_masks(kind, jax.random.PRNGKey(0), **kw)
  b = masking.make_masks(kind, jax.random.PRNGKey(1), **kw)
  a2 = masking.make_masks(kind, jax.random.PRNGKey(0), **kw)
  np.testing.assert_array_equal(a.mask, a2.mask)
  assert not np.array_equal(a.mask, b.mask)
  rows = {tuple(np.asarray(r)) for r in a.mask}
  assert len(rows) == B


@pytest.mark.parametrize("kind", masking.KINDS)
def test_jit_matches_eager(kind):
  ratio = 0.6
  nm = masking.block_num_masked(N, ratio)
  kw = dict(batch=B, num_patches=N, ratio=ratio, importance=_importance(3),
            binary=jnp.asarray(_binary(4, nm)), num_masked=nm)
  rng = jax.random.PRNGKey(5)
  f = jax.jit(masking.make_masks, static_argnums=0,
              static_argnames=("batch", "num_patches", "ratio", "num_masked"))
  jitted, eager = f(kind, rng, **kw), masking.make_masks(kind, rng, **kw)
  for x, y in zip(jitted, eager):
    np.testing.assert_array_equal(x, y)


def _plackett_luce_inclusion(weights: np.ndarray, k: int) -> np.ndarray:
  """Exact P(patch i among the first k) when drawing without replacement prop. to weights."""
  n = len(weights)
  incl = np.zeros(n)
  for seq in itertools.permutations(range(n), k):
    p, left = 1.0, weights.sum()
    for i in seq:
      p *= weights[i] / left
      left -= weights[i]
    incl[list(seq)] += p
  return incl


def test_attentive_follows_importance():
  n, k, draws = 8, 4, 20000  # ratio 0.5
  w = np.array([10.0] * 4 + [1.0] * 4)
  expect = _plackett_luce_inclusion(w, k)
  assert abs(expect.sum() - k) < 1e-9
  m = masking.attentive_masks(jax.random.PRNGKey(0), jnp.tile(jnp.asarray(w), (draws, 1)), 0.5)
  visible = 1.0 - np.asarray(m.mask)
  freq = visible.mean(0)
  sigma = np.sqrt(expect * (1 - expect) / draws)
  np.testing.assert_array_less(np.abs(freq - expect), 5 * sigma)
  # High-importance patches are visible far more often (expected ratio ~ 2.7 for these weights).
  ratio = freq[:4].mean() / freq[4:].mean()
  expect_ratio = expect[:4].mean() / expect[4:].mean()
  assert ratio > 2.0 and abs(ratio - expect_ratio) < 0.15 * expect_ratio
  # Stochastic: the visible set is the top-4 only as often as Plackett-Luce says, not always.
  # P(first four draws are all high) = 40/44 * 30/34 * 20/24 * 10/14 ~ 0.477.
  p_top = (40 / 44) * (30 / 34) * (20 / 24) * (10 / 14)
  all_top = (visible[:, :4].sum(1) == 4).mean()
  assert abs(all_top - p_top) < 5 * np.sqrt(p_top * (1 - p_top) / draws)


def test_attentive_uniform_importance_is_uniform_and_zero_guarded():
  draws, n = 20000, 16
  m = masking.attentive_masks(jax.random.PRNGKey(1), jnp.ones((draws, n)), 0.75)
  freq = 1.0 - np.asarray(m.mask).mean(0)  # expected 4/16 each
  np.testing.assert_array_less(np.abs(freq - 0.25), 5 * np.sqrt(0.25 * 0.75 / draws))
  # Zero importance: never visible while positive ones remain, and no NaNs in the ordering.
  imp = jnp.concatenate([jnp.zeros((draws, 8)), jnp.ones((draws, 8))], 1)
  m = masking.attentive_masks(jax.random.PRNGKey(2), imp, 0.75)
  assert np.asarray(m.mask)[:, :8].min() == 1.0
  assert len({tuple(np.asarray(r)) for r in m.ids_keep[:50]}) > 1


def test_focused_is_exact_top_k():
  imp = _importance(7)
  m = masking.focused_masks(imp, 0.75)
  k = masking.num_keep(N, 0.75)
  imp_np = np.asarray(imp)
  for b in range(B):
    top = np.argsort(-imp_np[b], kind="stable")[:k]
    np.testing.assert_array_equal(np.asarray(m.ids_keep[b]), top)  # by decreasing importance
    assert imp_np[b, np.asarray(m.mask[b]) == 0].min() > imp_np[b, np.asarray(m.mask[b]) == 1].max()


def test_cls_attention_importance():
  attn = jax.random.uniform(jax.random.PRNGKey(0), (2, 3, 1 + N, 1 + N))
  imp = masking.cls_attention_importance(attn)
  assert imp.shape == (2, N)
  a = np.asarray(attn)
  np.testing.assert_allclose(imp, (a[:, 0, 0, 1:] + a[:, 1, 0, 1:] + a[:, 2, 0, 1:]) / 3, rtol=1e-6)
  with pytest.raises(AssertionError, match="expected \\(None, None, 197, 197\\)"):
    masking.cls_attention_importance(attn[:, :, 0])


def test_masks_from_binary():
  nm = 78
  binary = _binary(9, nm)
  m = masking.masks_from_binary(binary, nm)
  np.testing.assert_array_equal(m.mask, binary.astype(np.float32))
  for b in range(B):
    np.testing.assert_array_equal(m.ids_keep[b], np.flatnonzero(binary[b] == 0))  # increasing
    np.testing.assert_array_equal(masking.masked_ids(m)[b], np.flatnonzero(binary[b] == 1))
  bad = binary.copy()
  bad[0, np.flatnonzero(bad[0] == 0)[0]] = 1
  with pytest.raises(ValueError, match="exactly 78"):
    masking.masks_from_binary(bad, nm)


def test_no_masks():
  m = masking.no_masks(2, 5)
  np.testing.assert_array_equal(m.ids_keep, [[0, 1, 2, 3, 4]] * 2)
  np.testing.assert_array_equal(m.ids_restore, [[0, 1, 2, 3, 4]] * 2)
  np.testing.assert_array_equal(m.mask, np.zeros((2, 5)))


def test_make_masks_errors():
  kw = dict(batch=B, num_patches=N, ratio=0.5)
  with pytest.raises(ValueError, match="known kinds: none, random, attentive, focused, block"):
    masking.make_masks("blocks", None, **kw)
  for kind in ("attentive", "focused"):
    with pytest.raises(ValueError, match="importance"):
      masking.make_masks(kind, jax.random.PRNGKey(0), **kw)
  with pytest.raises(ValueError, match="binary"):
    masking.make_masks("block", None, **kw)
  with pytest.raises(AssertionError, match="importance: \\(batch, num_patches\\)"):
    masking.make_masks("focused", None, importance=jnp.ones((B, N - 1)), **kw)
