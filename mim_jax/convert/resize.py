"""Bicubic resizing that equals torch's `F.interpolate(mode="bicubic", align_corners=False)`.

Used for position embeddings on another grid (a teacher matched to the student's grid, as
transformers' `interpolate_pos_encoding` does it; an `init_from` source of another resolution) and
for the teachers' input images, so one kernel serves both and both can be tested against torch.

The kernel is Keys' cubic convolution with a = -0.75 (torch's and OpenCV's choice; jax.image.resize
and PIL use a = -0.5), sampled at source coordinate (dst + 0.5) * in / out - 0.5, taps clamped to
the border, no antialiasing (torch's default). Resizing along one axis is a fixed [out, in] matrix,
built in numpy from static shapes, so it is exact, jit-friendly and runs as a matmul.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

TORCH_CUBIC_A = -0.75


def _cubic(d: np.ndarray, a: np.float32) -> np.ndarray:
  """Keys' cubic convolution kernel at distances 0 <= d < 2, in float32."""
  near = ((a + 2) * d - (a + 3)) * d * d + 1
  far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
  return np.where(d <= 1, near, far).astype(np.float32)


@functools.lru_cache(maxsize=64)
def bicubic_matrix(n_in: int, n_out: int, a: float = TORCH_CUBIC_A) -> np.ndarray:
  """[n_out, n_in] matrix M such that resized = M @ signal (rows sum to 1), float64.

  The source coordinates and the tap weights are computed in float32, as torch computes them for
  float32 tensors: a float64 coordinate differs by up to ~1e-5 pixel at 224 px, which moves the
  result by ~1e-4 on unit-variance inputs, more than the parity tests allow.
  """
  f32 = np.float32
  scale = f32(n_in) / f32(n_out)
  src = scale * (np.arange(n_out, dtype=f32) + f32(0.5)) - f32(0.5)
  base = np.floor(src)
  frac = np.clip(src - base, f32(0), f32(1))
  a = f32(a)
  taps = {-1: _cubic(frac + f32(1), a), 0: _cubic(frac, a), 1: _cubic(f32(1) - frac, a),
          2: _cubic(f32(2) - frac, a)}
  m = np.zeros((n_out, n_in), np.float64)
  rows = np.arange(n_out)
  for tap, weight in taps.items():
    idx = np.clip(base.astype(np.int64) + tap, 0, n_in - 1)
    np.add.at(m, (rows, idx), weight.astype(np.float64))
  m.setflags(write=False)
  return m


def resize_grid_np(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """x [h, w, C] -> [size[0], size[1], C], computed in float64, returned in float32."""
  mh = bicubic_matrix(x.shape[0], size[0])
  mw = bicubic_matrix(x.shape[1], size[1])
  return np.einsum("oh,hwc,pw->opc", mh, x.astype(np.float64), mw).astype(np.float32)


def resize_pos_embedding(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """A position embedding [(1,) extra + n*n, D] on another square grid: [(1,) extra + m*m, D]
  (`shape`), bicubic on the grid; the extra (CLS) row, where there is one, is kept. ValueError
  when the widths differ or the tokens are no square grid (with or without a CLS row)."""
  if value.shape[-1] != shape[-1]:
    raise ValueError(f"position embedding has shape {value.shape}, the student needs "
                     f"{tuple(shape)}; use a source with the student's width.")
  n_src, n_dst = value.shape[-2], shape[-2]
  rows = value.reshape(n_src, value.shape[-1])
  for extra in (1, 0):
    gs, gd = int(round((n_src - extra) ** 0.5)), int(round((n_dst - extra) ** 0.5))
    if gs * gs == n_src - extra and gd * gd == n_dst - extra:
      grid = rows[extra:].reshape(gs, gs, -1)
      out = resize_grid_np(grid, (gd, gd)).reshape(gd * gd, -1)
      return np.concatenate([rows[:extra], out], 0).reshape(shape).astype(value.dtype)
  raise ValueError(f"position embedding of {n_src} tokens cannot be resized to {n_dst}.")


def resize_images(images: jax.Array, size: tuple[int, int]) -> jax.Array:
  """images [B, H, W, C] -> [B, size[0], size[1], C] float32, inside jit if wanted."""
  b, h, w, c = images.shape
  if (h, w) == tuple(size):
    return images
  mh = jnp.asarray(bicubic_matrix(h, size[0]), jnp.float32)
  mw = jnp.asarray(bicubic_matrix(w, size[1]), jnp.float32)
  # HIGHEST: TPUs would otherwise round the float32 operands to bfloat16 in these matmuls.
  hi = jax.lax.Precision.HIGHEST
  x = jnp.einsum("oh,bhwc->bowc", mh, images.astype(jnp.float32), precision=hi)
  return jnp.einsum("pw,bowc->bopc", mw, x, precision=hi)
