"""Spectra of representations: singular values of token / image features, Fourier amplitudes.

Singular value spectra (the paper's Figures 4-6, after Park et al. 2022) measure how much volume
the features fill: a spectrum that falls fast means the features fold into few directions.
- token level: per image, the centred [N, D] matrix of its patch tokens; its singular values are
  divided by the largest, and these relative spectra are averaged over images;
- image level: the centred [B, D] matrix of mean-pooled features of B images, one spectrum.
The paper plots the relative *log* singular value, log s_i - log s_0 = log(s_i / s_0):
`log_relative` takes it from a relative spectrum, with a floor so that zeros stay finite.

Fourier (the paper's Figure 3b, after "How do vision transformers work?", Park & Kim 2022): a
layer's patch tokens are laid on the grid, each channel is 2-D Fourier transformed over the
spatial axes, and log(|F| + eps) is averaged over images and channels. The relative log
amplitude at frequency (k, k) is that average at (k, k) minus its value at (0, 0), read along the
diagonal from the zero frequency to the highest one, (g/2, g/2) = (pi, pi) for an even side g.
`eps` (1e-6, the reference code's) floors each amplitude, so a map with no energy at some
frequency (a constant map has none outside (0, 0)) gives log(eps) - log(|F(0, 0)| + eps) there,
a large negative number instead of -inf.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

Grid = tuple[int, int]
FOURIER_EPS = 1e-6


def relative_singular_values(x: jax.Array, center: bool = True) -> jax.Array:
  """Singular values of each matrix divided by its largest.

  Args:
    x: [..., M, D] (rows are samples: tokens of one image, or images).
    center: subtract the mean row first (the spread of the rows, not their offset).
  Returns:
    [..., min(M, D)] float32, descending, the first entry 1 (0 for an all-zero matrix).
  """
  x = x.astype(jnp.float32)
  if center:
    x = x - x.mean(-2, keepdims=True)
  s = jnp.linalg.svd(x, compute_uv=False)
  return s / jnp.maximum(s[..., :1], jnp.finfo(jnp.float32).tiny)


def token_spectrum(tokens: jax.Array, center: bool = True) -> jax.Array:
  """Token-level relative singular value spectrum, averaged over images.

  tokens: [B, N, D] patch tokens of one layer (CLS already removed) -> [min(N, D)].
  """
  return relative_singular_values(tokens, center).mean(0)


def mean_pool(tokens: jax.Array) -> jax.Array:
  """[B, N, D] -> [B, D]: the mean over tokens (pass the patch tokens)."""
  return tokens.astype(jnp.float32).mean(-2)


def image_spectrum(features: jax.Array, center: bool = True) -> jax.Array:
  """Image-level relative singular value spectrum: [B, D] pooled features -> [min(B, D)]."""
  return relative_singular_values(features, center)


def log_relative(spectrum: jax.Array, floor: float = 1e-6) -> jax.Array:
  """Relative log singular values log(s_i / s_0) from a relative spectrum [..., K] -> [..., K],
  each value floored at log(floor) (a zero singular value would be -inf)."""
  return jnp.log(jnp.maximum(spectrum, floor))


def spectrum_rank_bound(rows: int, dims: int, center: bool = True) -> int:
  """How many singular values can be non-zero: min(M, D), one fewer rows after centring."""
  return max(min(rows - 1 if center else rows, dims), 1)


def tokens_to_grid(tokens: jax.Array, grid: Grid) -> jax.Array:
  """[B, N, D] patch tokens in row-major order -> [B, gh, gw, D]."""
  b, n, d = tokens.shape
  if n != grid[0] * grid[1]:
    raise ValueError(f"{n} tokens do not fill a {grid[0]}x{grid[1]} grid (drop CLS first).")
  return tokens.reshape(b, grid[0], grid[1], d)


def fourier_log_amplitude(maps: jax.Array, eps: float = FOURIER_EPS) -> jax.Array:
  """Mean log amplitude of the 2-D Fourier transform of feature maps.

  Args:
    maps: [B, gh, gw, D] real features on the grid.
  Returns:
    [gh, gw] float32: mean over B and D of log(|FFT2(maps)| + eps), unshifted: index (0, 0) is
    the zero frequency, index (i, j) frequency (2 pi i / gh, 2 pi j / gw).
  """
  spectrum = jnp.fft.fft2(maps.astype(jnp.float32), axes=(1, 2))
  return jnp.log(jnp.abs(spectrum) + eps).mean(axis=(0, 3))


def relative_log_amplitude(maps: jax.Array, eps: float = FOURIER_EPS) -> jax.Array:
  """Relative log amplitude along the diagonal, from the zero to the highest frequency.

  Args:
    maps: [B, g, g, D] (a square grid).
  Returns:
    [g // 2 + 1] float32: entry k is mean log|F| at frequency (k, k) minus at (0, 0), so entry 0
    is 0 and the last entry is the highest frequency (pi, pi) for even g.
  """
  gh, gw = maps.shape[1:3]
  if gh != gw:
    raise ValueError(f"relative_log_amplitude needs a square grid, got {gh}x{gw}.")
  amp = fourier_log_amplitude(maps, eps)
  k = jnp.arange(gh // 2 + 1)
  diag = amp[k, k]
  return diag - diag[0]


def high_frequency_log_amplitude(maps: jax.Array, eps: float = FOURIER_EPS) -> jax.Array:
  """The scalar the paper plots per layer: relative log amplitude at the highest frequency.

  maps: [B, g, g, D] -> [] float32 (negative: less energy at high than at zero frequency).
  """
  return relative_log_amplitude(maps, eps)[-1]
