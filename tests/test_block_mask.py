"""Tests of mim_jax.data.block_mask: exact counts, rectangular blocks, reproducibility."""
import numpy as np
import pytest

from mim_jax import masking
from mim_jax.data import block_mask as bm

GRID = (14, 14)
N = 196


@pytest.mark.parametrize("ratio,count", [(0.0, 0), (0.1, 20), (0.4, 78), (0.5, 98), (0.75, 147)])
def test_exact_count(ratio, count):
  out = bm.block_masks(np.random.default_rng(0), 16, GRID, ratio)
  assert out.shape == (16, N) and out.dtype == np.uint8
  np.testing.assert_array_equal(out.sum(1), count)


def test_zero_and_full():
  assert not bm.block_mask(np.random.default_rng(0), GRID, 0).any()
  full = bm.block_mask(np.random.default_rng(0), GRID, N)
  assert full.shape == GRID and full.dtype == bool and full.all()
  with pytest.raises(ValueError):
    bm.block_mask(np.random.default_rng(0), GRID, N + 1)


@pytest.mark.parametrize("num_masked,kw", [(78, {}), (147, {}), (40, dict(min_patches=4)),
                                           (78, dict(max_patches=20, min_aspect=0.5))])
def test_block_phase_adds_rectangles(num_masked, kw):
  rng = np.random.default_rng(1)
  gh, gw = GRID
  raw_counts = []
  for _ in range(30):
    mask, rects = bm._add_blocks(rng, GRID, num_masked, **kw)
    assert mask.dtype == bool and mask.shape == GRID
    union = np.zeros(GRID, bool)
    for top, left, h, w in rects:
      # Inside the grid, strictly smaller than it (BEiT's h < gh, w < gw), non-empty.
      assert 0 <= top and top + h <= gh and 0 < h < gh
      assert 0 <= left and left + w <= gw and 0 < w < gw
      before = union.sum()
      union[top:top + h, left:left + w] = True
      assert union.sum() > before  # each kept block adds patches
      if "max_patches" in kw:
        assert union.sum() - before <= kw["max_patches"]
    np.testing.assert_array_equal(mask, union)  # the mask is exactly the filled rectangles
    assert mask.sum() <= num_masked
    raw_counts.append(mask.sum())
  # The blocks do most of the work; forcing only tops up the remainder.
  assert np.mean(raw_counts) >= 0.75 * num_masked


def test_force_count_only_adds_or_only_removes():
  rng = np.random.default_rng(2)
  mask = np.zeros(GRID, bool)
  mask[2:6, 3:9] = True  # 24 masked
  up = bm._force_count(rng, mask, 30)
  assert up.sum() == 30 and up[mask].all()
  down = bm._force_count(rng, mask, 10)
  assert down.sum() == 10 and not down[~mask].any()
  np.testing.assert_array_equal(bm._force_count(rng, mask, 24), mask)


def test_masks_are_blocky():
  """Masked patches cluster: far more masked 4-neighbours than under uniform random masking."""
  rng = np.random.default_rng(3)

  def masked_neighbour_frac(m):
    m = m.reshape(GRID)
    pad = np.pad(m, 1)
    nb = pad[:-2, 1:-1] & m | pad[2:, 1:-1] & m | pad[1:-1, :-2] & m | pad[1:-1, 2:] & m
    return nb.sum() / m.sum()

  block = np.mean([masked_neighbour_frac(m.astype(bool)) for m in bm.block_masks(rng, 32, GRID, 0.4)])
  rand = np.mean([masked_neighbour_frac(rng.permutation(N) < 78) for _ in range(32)])
  assert block > 0.9 and rand < 0.9 and block > rand + 0.1


def test_reproducible():
  a = bm.block_masks(np.random.default_rng(5), 8, GRID, 0.4)
  b = bm.block_masks(np.random.default_rng(5), 8, GRID, 0.4)
  c = bm.block_masks(np.random.default_rng(6), 8, GRID, 0.4)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert len({r.tobytes() for r in a}) == 8  # examples differ within a batch


def test_feeds_masks_from_binary():
  ratio = 0.4
  binary = bm.block_masks(np.random.default_rng(7), 4, GRID, ratio)
  assert bm.block_num_masked(N, ratio) == masking.block_num_masked(N, ratio) == 78
  m = masking.make_masks("block", None, batch=4, num_patches=N, ratio=ratio, binary=binary)
  np.testing.assert_array_equal(m.mask, binary.astype(np.float32))
  assert m.ids_keep.shape == (4, N - 78)
