"""Jit-able mask generators: every kind returns the same static-shape index arrays.

A mask is described by one permutation of the N patches per example, `ids_shuffle`, whose first
`n_keep` entries are the visible patches (in the order the student sees them) and whose rest are
the masked ones. From it come the three arrays of `Masks` (MAE's convention):

  ids_keep    = ids_shuffle[:, :n_keep]             which patches the student sees, in order
  ids_restore = argsort(ids_shuffle)                rank of each original patch in the shuffle
  mask[b, i]  = 1.0 if ids_restore[b, i] >= n_keep  1 = masked, in original patch order

so that `take_along_axis(concat([visible, mask_tokens], 1), ids_restore[..., None], 1)` puts every
token back at its original position. The kinds differ only in how the permutation is drawn:

  none       identity, nothing masked
  random     MAE: argsort of uniform noise
  attentive  MaskAlign / MILAN: Gumbel-top-k, i.e. a draw without replacement with probability
             proportional to the teacher's CLS attention (important patches tend to stay visible)
  focused    MR-MAE: deterministic top-k of the same importance
  block      BEiT: a binary mask made on the host (`mim_jax.data.block_mask`), visible first

Everything is a pure function of its inputs, with shapes fixed by the static arguments
(`num_patches`, `ratio`, `num_masked`, `kind`), so it traces once under `jax.jit` and never syncs
with the host.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("none", "random", "attentive", "focused", "block")
# Kinds whose permutation comes from a per-patch importance (teacher CLS attention).
_NEEDS_IMPORTANCE = ("attentive", "focused")


class Masks(NamedTuple):
  """Masking of a batch, in static shapes.

  Attributes:
    ids_keep: int32 [B, n_keep], visible patch indices in the order the student sees them.
    ids_restore: int32 [B, N], inverse of the shuffle (visible first, then masked): gathering
      `concat([visible, masked])` with it restores the original patch order.
    mask: float32 [B, N], 1 = masked, 0 = visible, in original patch order.

  The shuffle itself is not stored: `ids_shuffle = argsort(ids_restore)`, and the masked patch
  indices are `ids_shuffle[:, n_keep:]` (see `masked_ids`).
  """
  ids_keep: jax.Array
  ids_restore: jax.Array
  mask: jax.Array


def num_keep(num_patches: int, ratio: float) -> int:
  """Number of visible patches, MAE's rule `int(N * (1 - ratio))` (e.g. 196, 0.75 -> 49)."""
  _check_ratio(ratio)
  return int(num_patches * (1 - ratio))


def _check_ratio(ratio: float) -> None:
  if not 0.0 <= ratio <= 1.0:
    raise ValueError(f"mask ratio must be in [0, 1], got {ratio}")


def _from_shuffle(ids_shuffle: jax.Array, n_keep: int) -> Masks:
  """Masks from a permutation [B, N] whose first `n_keep` entries are the visible patches."""
  ids_shuffle = ids_shuffle.astype(jnp.int32)
  ids_restore = jnp.argsort(ids_shuffle, axis=1).astype(jnp.int32)
  # A patch is masked iff its rank in the shuffle is past the visible prefix; this is MAE's
  # "ones with the first n_keep zeroed, gathered by ids_restore" without the gather.
  mask = (ids_restore >= n_keep).astype(jnp.float32)
  return Masks(ids_keep=ids_shuffle[:, :n_keep], ids_restore=ids_restore, mask=mask)


def masked_ids(masks: Masks) -> jax.Array:
  """Masked patch indices, int32 [B, N - n_keep], in shuffle order."""
  n_keep = masks.ids_keep.shape[1]
  return jnp.argsort(masks.ids_restore, axis=1).astype(jnp.int32)[:, n_keep:]


def no_masks(batch: int, num_patches: int) -> Masks:
  """Everything visible: ids_keep = ids_restore = arange(N) per row, mask all zero."""
  ids = jnp.broadcast_to(jnp.arange(num_patches, dtype=jnp.int32), (batch, num_patches))
  return Masks(ids_keep=ids, ids_restore=ids, mask=jnp.zeros((batch, num_patches), jnp.float32))


def random_masks(rng: jax.Array, batch: int, num_patches: int, ratio: float) -> Masks:
  """MAE's per-example random masking.

  noise ~ U(0, 1) [B, N]; ids_shuffle = argsort(noise); the first `num_keep(N, ratio)` are visible.
  Returns `Masks` with ids_keep [B, n_keep], ids_restore [B, N], mask [B, N].
  """
  n_keep = num_keep(num_patches, ratio)
  noise = jax.random.uniform(rng, (batch, num_patches))
  return _from_shuffle(jnp.argsort(noise, axis=1), n_keep)


def attentive_masks(rng: jax.Array, importance: jax.Array, ratio: float) -> Masks:
  """MaskAlign / MILAN attentive masking: visible patches drawn proportionally to importance.

  Sorting `log(importance) + Gumbel noise` in decreasing order draws a permutation without
  replacement with probability proportional to importance (Gumbel-top-k, the Plackett-Luce
  distribution); its first `num_keep(N, ratio)` entries are visible. Importance needs no
  normalisation (a constant factor only shifts the logits).

  Args:
    rng: PRNG key.
    importance: float [B, N], non-negative (e.g. `cls_attention_importance`).
    ratio: mask ratio (static).
  Returns:
    `Masks` with ids_keep [B, n_keep], ids_restore [B, N], mask [B, N].
  """
  importance = jax.lax.stop_gradient(importance).astype(jnp.float32)
  n_keep = num_keep(importance.shape[1], ratio)
  # Zero importance would give log 0 = -inf, and -inf + noise ties among all zero entries; the
  # smallest positive float keeps them last but still randomly ordered among themselves.
  logits = jnp.log(jnp.maximum(importance, jnp.finfo(jnp.float32).tiny))
  scores = logits + jax.random.gumbel(rng, importance.shape, jnp.float32)
  return _from_shuffle(jnp.argsort(-scores, axis=1), n_keep)


def focused_masks(importance: jax.Array, ratio: float) -> Masks:
  """MR-MAE focused mimicking: the `num_keep(N, ratio)` most important patches are visible.

  Deterministic; ids_keep lists them by decreasing importance (ties: lower index first).

  Args:
    importance: float [B, N].
    ratio: mask ratio (static).
  Returns:
    `Masks` with ids_keep [B, n_keep], ids_restore [B, N], mask [B, N].
  """
  importance = jax.lax.stop_gradient(importance).astype(jnp.float32)
  n_keep = num_keep(importance.shape[1], ratio)
  return _from_shuffle(jnp.argsort(-importance, axis=1, stable=True), n_keep)


def cls_attention_importance(attn: jax.Array) -> jax.Array:
  """Patch importance from a teacher's last-layer attention probabilities.

  Args:
    attn: float [B, H, L, L] with L = 1 + N (CLS first).
  Returns:
    float32 [B, N]: the CLS query's attention to each patch key, mean over heads.
  """
  chex.assert_shape(attn, (None, None, attn.shape[-1], attn.shape[-1]))  # [B, H, L, L]
  return attn[:, :, 0, 1:].astype(jnp.float32).mean(axis=1)


def masks_from_binary(mask: jax.Array, num_masked: int) -> Masks:
  """Masks from a binary mask with exactly `num_masked` ones per row (host-made block masks).

  The shuffle is a stable sort of the mask: visible patches first in increasing index order, then
  the masked ones in increasing order. The output's `mask` is rebuilt from that shuffle, so it
  equals the input only when every row has exactly `num_masked` ones. Numpy input is checked;
  device input is not (that would need a host sync).

  Args:
    mask: [B, N] bool / int / float, 1 = masked.
    num_masked: number of masked patches per row (static).
  Returns:
    `Masks` with ids_keep [B, N - num_masked], ids_restore [B, N], mask [B, N].
  """
  num_patches = mask.shape[1]
  if not 0 <= num_masked <= num_patches:
    raise ValueError(f"num_masked={num_masked} outside [0, {num_patches}]")
  if isinstance(mask, np.ndarray):
    counts = (mask != 0).sum(axis=1)
    if np.any(counts != num_masked):
      raise ValueError(f"every row must mask exactly {num_masked} patches, got counts "
                       f"{sorted(set(counts.tolist()))}")
  keys = (jnp.asarray(mask) != 0).astype(jnp.int32)
  return _from_shuffle(jnp.argsort(keys, axis=1, stable=True), num_patches - num_masked)


def block_num_masked(num_patches: int, ratio: float) -> int:
  """Patches masked by block masking: `int(round(ratio * N))` (14x14 at 0.4 -> 78).

  The same rule as `mim_jax.data.block_mask.block_masks`, repeated here so that masking does
  not import the data pipeline.
  """
  _check_ratio(ratio)
  return int(round(ratio * num_patches))


def _check_shape(name: str, x: jax.Array, batch: int, num_patches: int) -> None:
  chex.assert_shape(x, (batch, num_patches), custom_message=f"{name}: (batch, num_patches)")


def make_masks(kind: str, rng: Optional[jax.Array], *, batch: int, num_patches: int,
               ratio: float, importance: Optional[jax.Array] = None,
               binary: Optional[jax.Array] = None, num_masked: Optional[int] = None) -> Masks:
  """Masks of the given kind for a batch; `kind`, `batch`, `num_patches`, `ratio`, `num_masked`
  are static.

  Args:
    kind: one of `KINDS`.
    rng: PRNG key (used by "random" and "attentive"; may be None otherwise).
    batch, num_patches: B and N.
    ratio: mask ratio; ignored by "none", and by "block" when `num_masked` is given.
    importance: float [B, N], required by "attentive" and "focused".
    binary: [B, N], 1 = masked, required by "block".
    num_masked: masked count per row of `binary`; default `block_num_masked(N, ratio)`.
  Returns:
    `Masks` with ids_keep [B, n_keep], ids_restore [B, N], mask [B, N].
  """
  if kind not in KINDS:
    raise ValueError(f"unknown mask kind {kind!r}; known kinds: {', '.join(KINDS)}")
  if kind == "none":
    return no_masks(batch, num_patches)
  if kind in _NEEDS_IMPORTANCE:
    if importance is None:
      raise ValueError(f"mask kind {kind!r} needs `importance` [B, N] (teacher CLS attention), "
                       "got None")
    _check_shape("importance", importance, batch, num_patches)
  if kind == "random":
    if rng is None:
      raise ValueError("mask kind 'random' needs an rng key, got None")
    return random_masks(rng, batch, num_patches, ratio)
  if kind == "attentive":
    if rng is None:
      raise ValueError("mask kind 'attentive' needs an rng key, got None")
    return attentive_masks(rng, importance, ratio)
  if kind == "focused":
    return focused_masks(importance, ratio)
  # kind == "block"
  if binary is None:
    raise ValueError("mask kind 'block' needs `binary` [B, N] (host-made block masks), got None")
  _check_shape("binary", binary, batch, num_patches)
  if num_masked is None:
    num_masked = block_num_masked(num_patches, ratio)
  return masks_from_binary(binary, num_masked)


# --------------------------------------------------------------------------------------------
# Multi-scale masks for hybrid (convolution + transformer) students.
# --------------------------------------------------------------------------------------------
def visible_from_ids(ids_keep: jax.Array, num_patches: int) -> jax.Array:
  """float32 [B, N], 1 = visible: the patches listed in `ids_keep` [B, n] (any kind of mask,
  since every kind yields `ids_keep`)."""
  b, n = ids_keep.shape
  rows = jnp.broadcast_to(jnp.arange(b)[:, None], (b, n))
  return jnp.zeros((b, num_patches), jnp.float32).at[rows, ids_keep].set(1.0)


def upsample_mask(mask: jax.Array, grid: tuple[int, int], factor: int) -> jax.Array:
  """A mask on the coarse grid, [B, gh * gw] row-major, to the grid `factor` times finer,
  [B, gh f * gw f] row-major: every coarse patch's value is copied to its f x f children.
  Static shapes (a reshape and two repeats)."""
  gh, gw = grid
  chex.assert_shape(mask, (None, gh * gw), custom_message="mask: [B, gh * gw]")
  m = mask.reshape(mask.shape[0], gh, gw)
  m = jnp.repeat(jnp.repeat(m, factor, axis=1), factor, axis=2)
  return m.reshape(mask.shape[0], gh * factor * gw * factor)


def multiscale_masks(mask: jax.Array, grid: tuple[int, int], factors: tuple[int, ...] = (4, 2)
                     ) -> tuple[jax.Array, ...]:
  """ConvMAE's multi-scale masking: one mask at the 1/16 grid [B, N] shared by the finer stages
  (factor 4: the 1/4 grid, factor 2: the 1/8 grid), so a patch hidden from the transformer is
  hidden from every convolution too. Returns one [B, N f^2] mask per factor."""
  return tuple(upsample_mask(mask, grid, f) for f in factors)
