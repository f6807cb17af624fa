"""Measures of attention probabilities: locality, entropy, query-key mutual information, maps.

Every function takes attention probabilities `attn` [..., Lq, Lk] (rows sum to one, e.g. the
student's `aux["attn"][i]` [B, H, L, L] or a teacher's) and reduces over queries, keeping the
leading axes, so [B, H, L, L] -> [B, H] (per image and head); average over B afterwards.

Sequences are [prefix tokens (CLS), patches in row-major grid order]; `num_prefix` says how many
tokens come before the patches. Distances and maps need patch positions, so they drop the prefix
from both the queries and the keys. Entropy and mutual information are measured on whatever
distribution they are given (the CLI gives them full rows, CLS included: that is the softmax the
model actually computed).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import xlogy

Grid = tuple[int, int]


def patch_positions(grid: Grid) -> np.ndarray:
  """float32 [N, 2]: (row, col) of each patch, N = gh * gw, row-major."""
  gh, gw = grid
  rows, cols = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
  return np.stack([rows.reshape(-1), cols.reshape(-1)], axis=-1).astype(np.float32)


def patch_distances(grid: Grid) -> np.ndarray:
  """float32 [N, N]: Euclidean distance between patches q and k, in patches."""
  pos = patch_positions(grid)
  diff = pos[:, None, :] - pos[None, :, :]
  return np.sqrt((diff ** 2).sum(-1)).astype(np.float32)


def patch_attention(attn: jax.Array, num_prefix: int = 1, renormalize: bool = False
                    ) -> jax.Array:
  """[..., P + N, P + N] -> [..., N, N]: patch queries attending to patch keys.

  With `renormalize`, each row is divided by its mass on patch keys, so it is a distribution
  over patches again (what is left after the share that went to CLS is removed).
  """
  a = attn[..., num_prefix:, num_prefix:].astype(jnp.float32)
  if renormalize:
    a = a / jnp.maximum(a.sum(-1, keepdims=True), jnp.finfo(jnp.float32).tiny)
  return a


def _check_grid(attn: jax.Array, grid: Grid, num_prefix: int) -> None:
  n = grid[0] * grid[1]
  if attn.shape[-1] != n + num_prefix or attn.shape[-2] != n + num_prefix:
    raise ValueError(f"attn must be [..., {n + num_prefix}, {n + num_prefix}] for grid "
                     f"{grid[0]}x{grid[1]} with {num_prefix} prefix token(s), got {attn.shape}.")


def average_attention_distance(attn: jax.Array, grid: Grid, num_prefix: int = 1,
                               renormalize: bool = False) -> jax.Array:
  """Attention-weighted distance between query and key patches, in patches.

  For each patch query q: sum_k attn[q, k] * |pos(q) - pos(k)| over patch keys k, then the mean
  over patch queries. CLS is excluded from both sides. Without `renormalize` the weights are the
  raw probabilities (the share of attention that went to CLS counts as distance 0, as in the ViT
  paper's measure); with it, each row is rescaled to sum to one over the patch keys.

  Args:
    attn: [..., P + N, P + N] probabilities, N = gh * gw, P = num_prefix.
    grid: (gh, gw).
  Returns:
    [...] float32, e.g. [B, H].
  """
  _check_grid(attn, grid, num_prefix)
  a = patch_attention(attn, num_prefix, renormalize)
  per_query = (a * jnp.asarray(patch_distances(grid))).sum(-1)  # [..., N]
  return per_query.mean(-1)


def row_entropy(p: jax.Array) -> jax.Array:
  """[..., K] distributions -> [...] entropy in nats (0 log 0 = 0)."""
  return -xlogy(p, p).sum(-1)


def attention_entropy(attn: jax.Array) -> jax.Array:
  """Mean over queries of the entropy (nats) of each query's attention row.

  [..., Lq, Lk] -> [...]. Uniform rows give log(Lk); one-hot rows give 0.
  """
  return row_entropy(attn.astype(jnp.float32)).mean(-1)


def attention_nmi(attn: jax.Array, normalization: str = "sqrt") -> jax.Array:
  """Normalised mutual information between queries Q and keys K.

  The attention row of query q is p(k | q); queries are uniform, p(q) = 1 / Lq, so
  p(k) = mean_q p(k | q), H(Q) = log Lq, and I(Q; K) = H(K) - H(K | Q) with
  H(K | Q) = mean_q H(p(. | q)). The paper's normalisation is
  NMI = I(Q; K) / sqrt(H(Q) H(K)) ("sqrt", the default); "key" gives I(Q; K) / H(K), the fraction
  of the keys' entropy the query explains. Both are 1 for one-hot rows that pick distinct keys
  for distinct queries (Lq = Lk, e.g. the identity) and 0 when every query attends alike (e.g.
  uniform rows). When the denominator is 0 (Lq = 1, or every query puts all its mass on the
  same key) I(Q; K) is 0 too and the result is defined as 0.

  Args:
    attn: [..., Lq, Lk] probabilities.
    normalization: "sqrt" | "key".
  Returns:
    [...] float32 in [0, 1] (up to rounding).
  """
  a = attn.astype(jnp.float32)
  h_k = row_entropy(a.mean(-2))  # marginal over keys
  mi = jnp.maximum(h_k - row_entropy(a).mean(-1), 0.0)  # rounding can dip below 0
  if normalization == "sqrt":
    denom = jnp.sqrt(jnp.log(float(a.shape[-2])) * h_k)
  elif normalization == "key":
    denom = h_k
  else:
    raise ValueError(f"Unknown normalization {normalization!r}: use 'sqrt' or 'key'.")
  safe = denom > 1e-12
  return jnp.where(safe, mi / jnp.where(safe, denom, 1.0), 0.0)


def query_attention_maps(attn: jax.Array, grid: Grid, queries: Sequence[int],
                         num_prefix: int = 1) -> jax.Array:
  """Attention of chosen patch queries over the patch keys, on the grid.

  Args:
    attn: [..., P + N, P + N].
    queries: patch indices (row-major, 0 = top-left patch; CLS not counted).
  Returns:
    [..., len(queries), gh, gw] (the raw probabilities, CLS's share left out).
  """
  _check_grid(attn, grid, num_prefix)
  rows = jnp.asarray(np.asarray(queries, np.int32) + num_prefix)
  maps = jnp.take(attn[..., num_prefix:], rows, axis=-2)
  return maps.reshape(*maps.shape[:-1], *grid)


def cls_attention_map(attn: jax.Array, grid: Grid, num_prefix: int = 1) -> jax.Array:
  """CLS (token 0) attending to the patches: [..., P + N, P + N] -> [..., gh, gw]."""
  _check_grid(attn, grid, num_prefix)
  return attn[..., 0, num_prefix:].reshape(*attn.shape[:-2], *grid)
