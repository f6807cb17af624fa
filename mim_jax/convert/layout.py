"""Tensor layouts: torch modules' weights <-> the shared Flax layers' (`mim_jax.models.layers`).

torch -> ours (teachers' converters, `init_from`), numpy in and out:
  conv weight [D, C, p, p]           -> PatchEmbed kernel [p, p, C, D] (HWIO)
  linear weight [out, in]            -> Dense kernel [in, out]
  q, k, v weights [H*Dh, D] each     -> Attention qkv_kernel [D, 3, H, Dh] (+ biases [3, H, Dh])
  output weight [D, H*Dh]            -> Attention out_kernel [H, Dh, D]
ours -> torch (`export`), any array in, host float32 out: the inverses.

Also the position embedding a student adds (fixed sin-cos, learned or none), a shared relative
position bias table copied to every block, and CLIP's patch embedding re-expressed on the
student's normalisation.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mim_jax.data import normalization
from mim_jax.models import layers


# ---- torch -> ours -------------------------------------------------------------------------
def conv_to_hwio(weight: np.ndarray) -> np.ndarray:
  """torch Conv2d weight [D, C, p, p] -> PatchEmbed kernel [p, p, C, D]."""
  return np.transpose(weight, (2, 3, 1, 0))


def linear_to_kernel(weight: np.ndarray) -> np.ndarray:
  """torch Linear weight [out, in] -> Dense kernel [in, out]."""
  return np.transpose(weight)


def fused_qkv(q: np.ndarray, k: np.ndarray, v: np.ndarray, heads: int) -> np.ndarray:
  """Three torch Linear weights [H*Dh, D] -> Attention qkv_kernel [D, 3, H, Dh]."""
  d = q.shape[1]
  return np.stack([w.T.reshape(d, heads, -1) for w in (q, k, v)], axis=1)


def fused_qkv_bias(q: np.ndarray, k: np.ndarray, v: np.ndarray, heads: int) -> np.ndarray:
  """Three torch Linear biases [H*Dh] -> Attention qkv_bias [3, H, Dh]."""
  return np.stack([b.reshape(heads, -1) for b in (q, k, v)], axis=0)


def out_kernel(weight: np.ndarray, heads: int) -> np.ndarray:
  """torch Linear weight [D, H*Dh] -> Attention out_kernel [H, Dh, D]."""
  return weight.T.reshape(heads, -1, weight.shape[0])


def layer_norm(weights: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
  """torch LayerNorm `prefix`.weight, .bias -> {"scale", "bias"}."""
  return {"scale": weights[prefix + ".weight"], "bias": weights[prefix + ".bias"]}


def dense(weights: Mapping[str, np.ndarray], prefix: str, bias: bool = True
          ) -> dict[str, np.ndarray]:
  """torch Linear `prefix`.weight [out, in] (, .bias) -> {"kernel" [in, out] (, "bias")}."""
  out = {"kernel": linear_to_kernel(weights[prefix + ".weight"])}
  if bias:
    out["bias"] = weights[prefix + ".bias"]
  return out


# ---- ours -> torch -------------------------------------------------------------------------
def host(x: Any) -> np.ndarray:
  """A writable host float32 copy (params must be fully addressable: one host, or gathered)."""
  return np.array(jax.device_get(x), np.float32)


def conv_weight(kernel: Any) -> np.ndarray:
  """HWIO [p, p, C, D] -> torch conv [D, C, p, p]."""
  return host(kernel).transpose(3, 2, 0, 1)


def linear_weight(kernel: Any) -> np.ndarray:
  """[in, out] -> torch linear [out, in]."""
  return host(kernel).T


def qkv_weights(kernel: Any) -> list[np.ndarray]:
  """[D, 3, H, Dh] -> three torch linear weights [H*Dh, D] (q, k, v)."""
  k = host(kernel)
  d = k.shape[0]
  return [np.ascontiguousarray(k[:, t].reshape(d, -1).T) for t in range(3)]


def out_weight(kernel: Any) -> np.ndarray:
  """[H, Dh, D] -> torch linear [D, H*Dh]."""
  k = host(kernel)
  return np.ascontiguousarray(k.reshape(-1, k.shape[-1]).T)


# ---- embeddings ----------------------------------------------------------------------------
def position_embedding(params: Mapping[str, Any], vit: Any) -> np.ndarray:
  """The [N + 1, D] embedding a student `vit` (`models.vit.ViT`) adds to [CLS, patches], as a
  host float32 array: fixed sin-cos (CLS row zeros), its learned `params["pos_embedding"]`, or
  zeros."""
  if vit.posemb == "sincos":
    return np.array(layers.posemb_sincos_2d(vit.grid, vit.width, cls_token=True), np.float32)
  if vit.posemb == "learned":
    return host(params["pos_embedding"])
  if vit.posemb == "none":
    return np.zeros((vit.num_patches + 1, vit.width), np.float32)
  raise ValueError(f"Unknown posemb {vit.posemb!r}: use 'sincos', 'learned' or 'none'.")


def unshare_relative_position_bias(params: dict, depth: int) -> dict:
  """Shared-table params -> per-layer-table params (BEiT's start of fine-tuning): every block's
  table `rel_pos_bias_{i}` starts as a copy of the shared `rel_pos_bias`. Other entries kept."""
  params = dict(params)
  shared = params.pop("rel_pos_bias")
  for i in range(depth):
    params[f"rel_pos_bias_{i}"] = jax.tree.map(jnp.array, shared)
  return params


def clip_patch_embedding(kernel: np.ndarray, mean: Sequence[float], std: Sequence[float]
                         ) -> tuple[np.ndarray, np.ndarray]:
  """CLIP's patch kernel [p, p, 3, D] (no bias, on pixels normalised by CLIP's mean/std) as the
  (kernel [p, p, 3, D], bias [D]) of the same function on student-normalised pixels:
  (x * s_student + m_student - m_clip) / s_clip per channel, folded into the convolution."""
  m_s = np.asarray(normalization.STUDENT_MEAN)
  s_s = np.asarray(normalization.STUDENT_STD)
  m_c, s_c = np.asarray(mean, np.float64), np.asarray(std, np.float64)
  k = kernel.astype(np.float64)
  scaled = k * (s_s / s_c)[None, None, :, None]
  bias = np.einsum("hwcd,c->d", k, (m_s - m_c) / s_c)
  return scaled.astype(np.float32), bias.astype(np.float32)
