"""Every per-layer measure of one forward pass, as one jit-able function of its outputs.

Works for the student (`aux["blocks"]`, `aux["attn"]`) and for a teacher (`hidden_states[1:]`,
`attn`) alike: both give per-block token sequences [B, P + N, D] and per-block attention
probabilities [B, H, P + N, P + N] with P prefix tokens (CLS) before N = gh * gw patches.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

from mim_jax.analysis import attention, spectra

Grid = tuple[int, int]

# Keys of `layer_measures` that hold one number per (layer, head) or per (layer, index): what the
# CLI writes to JSON. The map entries are for pictures only.
NUMBERS = ("attention_distance", "attention_entropy", "attention_nmi", "token_spectrum",
           "image_spectrum", "fourier", "fourier_high")


def layer_measures(blocks: Sequence[jax.Array], attn: Mapping[int, jax.Array], grid: Grid, *,
                   num_prefix: int = 1, renormalize: bool = False,
                   nmi_normalization: str = "sqrt", queries: Sequence[int] = (),
                   num_maps: int = 4) -> dict[str, jax.Array]:
  """Measures of L layers from one batch of B images.

  Args:
    blocks: L arrays [B, P + N, D], the token sequence after each block.
    attn: {layer: [B, H, P + N, P + N]} for every layer 0..L-1.
    grid: (gh, gw) patch grid; the Fourier measure needs gh == gw.
    num_prefix: P, the tokens before the patches.
    renormalize: average attention distance over patch keys renormalised to sum to one.
    nmi_normalization: "sqrt" (the paper's) or "key", see `attention.attention_nmi`.
    queries: patch indices whose attention maps to return.
    num_maps: maps are returned for the first min(num_maps, B) images.
  Returns:
    {"attention_distance", "attention_entropy", "attention_nmi": [L, H] averaged over images;
     "token_spectrum": [L, min(N, D)]; "image_spectrum": [L, min(B, D)] (mean-pooled patches);
     "fourier": [L, g // 2 + 1] relative log amplitude from zero to highest frequency;
     "fourier_high": [L] its last entry;
     "cls_maps": [L, n, H, gh, gw]; "query_maps": [L, n, H, len(queries), gh, gw] (when queries
     are given)}, all float32.
  """
  depth = len(blocks)
  missing = [i for i in range(depth) if i not in attn]
  if missing:
    raise ValueError(f"attention probabilities missing for layers {missing}.")
  n = min(num_maps, blocks[0].shape[0])
  rows: dict[str, list] = {}

  def add(key, value):
    rows.setdefault(key, []).append(value)

  for i in range(depth):
    a = attn[i]
    add("attention_distance", attention.average_attention_distance(
        a, grid, num_prefix, renormalize).mean(0))
    add("attention_entropy", attention.attention_entropy(a).mean(0))
    add("attention_nmi", attention.attention_nmi(a, nmi_normalization).mean(0))
    add("cls_maps", attention.cls_attention_map(a[:n], grid, num_prefix))
    if queries:
      add("query_maps", attention.query_attention_maps(a[:n], grid, queries, num_prefix))
    patches = blocks[i][:, num_prefix:].astype(jnp.float32)
    add("token_spectrum", spectra.token_spectrum(patches))
    add("image_spectrum", spectra.image_spectrum(spectra.mean_pool(patches)))
    profile = spectra.relative_log_amplitude(spectra.tokens_to_grid(patches, grid))
    add("fourier", profile)
    add("fourier_high", profile[-1])
  return {k: jnp.stack(v).astype(jnp.float32) for k, v in rows.items()}
