"""BEiT block-wise masking, made on the host (numpy) in the input pipeline.

The mask of one image is built in two phases:

1. Blocks (`_add_blocks`). While fewer than `num_masked` patches are masked, one round tries up to
   10 random rectangles: area ~ U(min_patches, cap) with cap = min(remaining, max_patches),
   aspect = exp(U(log min_aspect, log max_aspect)), h = round(sqrt(area * aspect)),
   w = round(sqrt(area / aspect)). A rectangle is tried only if h < gh and w < gw, at a position
   drawn uniformly among those where it fits, and is kept if it newly masks 0 < new <= cap
   patches (it may overlap earlier blocks). The round ends at the first kept rectangle; a round
   that keeps none ends the phase.
2. Exact count (`_force_count`). Phase 1 may stop short of the target, so random unmasked patches
   are masked to make up the deficit (or random masked ones unmasked, for a surplus). Every
   example then masks exactly `num_masked` patches, which keeps shapes static downstream
   (`mim_jax.masking.masks_from_binary`).

Rounding of the count from a ratio: `int(round(ratio * N))` (Python's round, half to even), so
40% of 14x14 = 78.4 -> 78. BEiT's "75 of 196" is an explicit count: call `block_mask` with it, or
pass ratio = 75 / 196.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

# Rectangles tried per round before the block phase gives up (BEiT's constant).
_ATTEMPTS = 10

Rect = tuple[int, int, int, int]  # (top, left, height, width)


def block_num_masked(num_patches: int, ratio: float) -> int:
  """Patches masked per example for a ratio: `int(round(ratio * N))`."""
  if not 0.0 <= ratio <= 1.0:
    raise ValueError(f"mask ratio must be in [0, 1], got {ratio}")
  return int(round(ratio * num_patches))


def _try_block(rng: np.random.Generator, mask: np.ndarray, cap: int, min_patches: int,
               log_aspect: tuple[float, float]) -> Optional[Rect]:
  """One round: up to `_ATTEMPTS` rectangles; masks and returns the first that adds 0 < new <= cap.

  `mask` [gh, gw] bool is updated in place. Returns None when no attempt was kept.
  """
  gh, gw = mask.shape
  # With few patches left, cap < min_patches: the area is then drawn between the two, which is
  # what BEiT's U(min, cap) does when its bounds are reversed.
  lo, hi = sorted((float(min_patches), float(cap)))
  for _ in range(_ATTEMPTS):
    area = rng.uniform(lo, hi)
    aspect = math.exp(rng.uniform(*log_aspect))
    h = int(round(math.sqrt(area * aspect)))
    w = int(round(math.sqrt(area / aspect)))
    if not (0 < h < gh and 0 < w < gw):
      continue
    top = int(rng.integers(0, gh - h + 1))
    left = int(rng.integers(0, gw - w + 1))
    new = h * w - int(mask[top:top + h, left:left + w].sum())
    if 0 < new <= cap:
      mask[top:top + h, left:left + w] = True
      return (top, left, h, w)
  return None


def _add_blocks(rng: np.random.Generator, grid: tuple[int, int], num_masked: int, *,
                min_patches: int = 16, max_patches: Optional[int] = None,
                min_aspect: float = 0.3,
                max_aspect: Optional[float] = None) -> tuple[np.ndarray, list[Rect]]:
  """Phase 1 only: the block mask before the count is forced, and the kept rectangles.

  Returns:
    mask: bool [gh, gw], the union of the rectangles, with at most `num_masked` True.
    rects: the kept rectangles (top, left, height, width), in the order they were added.
  """
  gh, gw = grid
  max_patches = num_masked if max_patches is None else max_patches
  max_aspect = 1.0 / min_aspect if max_aspect is None else max_aspect
  log_aspect = (math.log(min_aspect), math.log(max_aspect))
  mask = np.zeros((gh, gw), dtype=bool)
  rects: list[Rect] = []
  count = 0
  while count < num_masked:
    cap = min(num_masked - count, max_patches)
    before = count
    rect = _try_block(rng, mask, cap, min_patches, log_aspect)
    if rect is None:
      break
    rects.append(rect)
    count = int(mask.sum())
    assert count > before  # a kept block always adds patches; guards against an endless loop
  return mask, rects


def _force_count(rng: np.random.Generator, mask: np.ndarray, num_masked: int) -> np.ndarray:
  """Phase 2: a copy of `mask` (bool, any shape) with exactly `num_masked` True.

  A deficit is made up by masking random unmasked patches, a surplus removed by unmasking random
  masked ones; patches not chosen keep their state.
  """
  flat = mask.reshape(-1).copy()
  diff = num_masked - int(flat.sum())
  if diff > 0:
    flat[rng.choice(np.flatnonzero(~flat), diff, replace=False)] = True
  elif diff < 0:
    flat[rng.choice(np.flatnonzero(flat), -diff, replace=False)] = False
  return flat.reshape(mask.shape)


def block_mask(rng: np.random.Generator, grid: tuple[int, int], num_masked: int, *,
               min_patches: int = 16, max_patches: Optional[int] = None,
               min_aspect: float = 0.3, max_aspect: Optional[float] = None) -> np.ndarray:
  """BEiT block-wise mask of one image with exactly `num_masked` masked patches.

  Args:
    rng: numpy Generator (the only source of randomness: same seed, same mask).
    grid: (gh, gw) patch grid.
    num_masked: masked patches, in [0, gh * gw].
    min_patches: smallest block area drawn.
    max_patches: largest block area drawn (default: `num_masked`).
    min_aspect, max_aspect: aspect-ratio range (default max: 1 / min_aspect).
  Returns:
    bool [gh, gw], True = masked.
  """
  gh, gw = grid
  if not 0 <= num_masked <= gh * gw:
    raise ValueError(f"num_masked={num_masked} outside [0, {gh * gw}] for grid {grid}")
  if num_masked == 0:
    return np.zeros((gh, gw), dtype=bool)
  mask, _ = _add_blocks(rng, grid, num_masked, min_patches=min_patches, max_patches=max_patches,
                        min_aspect=min_aspect, max_aspect=max_aspect)
  return _force_count(rng, mask, num_masked)


def block_masks(rng: np.random.Generator, batch: int, grid: tuple[int, int], ratio: float,
                **kw) -> np.ndarray:
  """Block masks of a batch, flattened row-major, `block_num_masked(gh * gw, ratio)` per row.

  Args:
    rng: numpy Generator.
    batch: number of examples B.
    grid: (gh, gw) patch grid, N = gh * gw.
    ratio: mask ratio.
    **kw: forwarded to `block_mask` (min_patches, max_patches, min_aspect, max_aspect).
  Returns:
    uint8 [B, N], 1 = masked, ready for `mim_jax.masking.masks_from_binary`.
  """
  num_masked = block_num_masked(grid[0] * grid[1], ratio)
  out = np.empty((batch, grid[0] * grid[1]), dtype=np.uint8)
  for b in range(batch):
    out[b] = block_mask(rng, grid, num_masked, **kw).reshape(-1)
  return out


def leaves_a_patch(ratio: float, ctx: "allowed.Context") -> Optional[str]:
  """mask.ratio: at least one patch stays visible (the encoder needs a token to see)."""
  n, kind = ctx.num_patches, ctx.get("mask.kind")
  if n is None or kind == "none":
    return None
  visible = n - block_num_masked(n, ratio) if kind == "block" else int(n * (1 - ratio))
  if visible < 1:
    return (f"a number in [0, 1] that leaves at least one of the {n} patches visible "
            f"(mask.kind {kind!r})")
  return None
