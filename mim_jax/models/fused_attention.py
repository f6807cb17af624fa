"""Fused attention through `jax.nn.dot_product_attention`: `CUDNN`, the GPU's `PlatformOps`.

`platforms.select` chooses `CUDNN` for a step compiled for GPUs under `config.attention` "auto"
or "cudnn" when the matmuls run in bf16: cuDNN's flash attention never writes the [B, H, L, L]
scores to memory, forward or backward. Everything else is `layers.PORTABLE`'s.

Per call, the kernel applies where cuDNN takes it: bf16 or f16 operands, a head dimension that
is a multiple of 8 up to 128 (ViT-B and -L: 64; H/14: 80), no dropout on the probabilities and no
request for them (the teacher's attention-map layer). Any other call runs `softmax_attention`,
as `layers.PlatformOps` allows: a float32 teacher, attention dropout, the one teacher layer whose
map drives the masks.

`dot_product_attention(..., implementation="xla")` is the same wrapper on XLA's own
implementation of the same function: what the tests run on CPU (tests/test_fused_attention.py)
to check the wrapper's layout, scaling and bias handling against `softmax_attention`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from mim_jax.models import layers

# What cuDNN's fused attention takes (jax 0.10.2's `jax.nn.dot_product_attention` checks the
# same): operand dtypes, and head dimensions.
CUDNN_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
CUDNN_MAX_HEAD_DIM = 128


def applies(dtype: layers.Dtype, head_dim: int, implementation: str) -> bool:
  """Whether `implementation`'s kernel takes matmuls of `dtype` at `head_dim` ("xla": any)."""
  if implementation == "xla":
    return True
  return (jnp.dtype(dtype) in CUDNN_DTYPES and head_dim % 8 == 0
          and head_dim <= CUDNN_MAX_HEAD_DIM)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, bias: Optional[jax.Array],
                          dtype: layers.Dtype,
                          dropout: Optional[Callable[[jax.Array], jax.Array]] = None,
                          return_probs: bool = False, *, implementation: str = "cudnn"
                          ) -> tuple[jax.Array, Optional[jax.Array]]:
  """`layers.PlatformOps.attention` by `jax.nn.dot_product_attention(implementation=...)`.

  q [B, H, Lq, Dh], k, v [B, H, Lk, Dh] -> (out [B, H, Lq, Dh] in q's dtype, None); a call the
  kernel does not take (see the module docstring) -> `layers.softmax_attention`'s result.
  The function wants [B, L, H, Dh]: the transposes are XLA's to fuse into the projections.
  """
  if dropout is not None or return_probs or not applies(dtype, q.shape[-1], implementation):
    return layers.softmax_attention(q, k, v, bias, dtype, dropout, return_probs)
  to_blhd = lambda x: jnp.swapaxes(x.astype(dtype), 1, 2)
  if bias is not None:
    bias = jnp.broadcast_to(bias, (1,) * (4 - bias.ndim) + bias.shape).astype(dtype)
  out = jax.nn.dot_product_attention(to_blhd(q), to_blhd(k), to_blhd(v), bias=bias,
                                     scale=q.shape[-1] ** -0.5, implementation=implementation)
  return jnp.swapaxes(out, 1, 2).astype(q.dtype), None


CUDNN = dataclasses.replace(
    layers.PORTABLE, name="cudnn_attention",
    attention=functools.partial(dot_product_attention, implementation="cudnn"))
