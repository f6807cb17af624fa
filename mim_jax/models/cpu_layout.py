"""The single-CPU-device layout of the layers' matmuls: `OPS`, a `layers.PlatformOps` record.

`platforms.select` chooses it for a train step compiled for one CPU device while
`config.cpu_matmul_layout` (the default); every other target runs `layers.PORTABLE`. It changes
the program XLA:CPU compiles, never the values (tests/test_cpu_layout.py). Three parts:

- `dot` (`canonical_einsum`): bf16 operands that are not already in a layout XLA's CPU backend
  sends to its fast bf16 kernel ([batch, M, K] x [batch, K, N] or [batch, N, K]) are copied into
  one first. The copy flattens arrays behind an optimization barrier, which would destroy a
  sharded axis: hence never on a mesh of several devices.
- `block_input` (`cotangent_barrier`): each block's residual cotangent is materialised once
  (float32 and bf16): XLA's CPU fusion otherwise recomputes it inside every consumer, quadratic
  in depth.
- `qkv_projection`: computed in its natural layout, so that no qkv kernel is copied transposed
  in every step.

The attention is `PORTABLE`'s (`layers.softmax_attention`).
"""
from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from mim_jax.models import layers

F32 = jnp.float32


def _materialize(x: jax.Array, perm: tuple[int, ...], shape: tuple[int, ...]) -> jax.Array:
  """x transposed by `perm` and reshaped, as a real copy in row-major order.

  XLA's CPU layout assignment would otherwise fold the transpose into the dot, whose operands
  then reach the slow (non-YNNPACK) bf16 kernel: a weight gradient contracting over the
  leading (token) axis ran at half the speed of the same product with the transpose done.
  Flattening behind an optimization barrier forces the copy.
  """
  if perm == tuple(range(x.ndim)):
    return x.reshape(shape)
  return jax.lax.optimization_barrier(jnp.transpose(x, perm).reshape(-1)).reshape(shape)


def canonical_einsum(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
  """einsum(spec, a, b) in f32 as one batched matmul of bf16 operands in the layouts XLA:CPU's
  fast bf16 kernel takes without a copy: lhs [batch, M, K], rhs [batch, K, N] or [batch, N, K].

  Of the ways to cast the einsum in that form (which operand is the lhs, the order of the
  contracted and free axes) the one that copies the fewest elements wins: an operand that is not
  already in its form is materialised (`_materialize`), and so is the product if its axes come
  out in another order than `spec`'s. The rhs's [N, K] form lets x @ W^T read W as it is stored:
  the backward pass's input gradient then needs no transposed copy of the kernel.
  """
  ins, out = spec.split("->")
  sa, sb = ins.split(",")
  size = {**dict(zip(sa, a.shape)), **dict(zip(sb, b.shape))}
  n = lambda idx: int(np.prod([size[c] for c in idx], dtype=np.int64))
  batch = [c for c in out if c in sa and c in sb]

  def plans():  # (copied elements, lhs, rhs, whether rhs is [N, K], free/contracted axes)
    for (sl, x_l), (sr, x_r) in (((sa, a), (sb, b)), ((sb, b), (sa, a))):
      # Each axis group in the order of either operand or of the output.
      ks = {tuple(c for c in s if c not in out) for s in (sl, sr)}
      fls = {tuple(c for c in s if c in sl and c not in sr) for s in (out, sl)}
      frs = {tuple(c for c in s if c in sr and c not in sl) for s in (out, sr)}
      for k, fl, fr in itertools.product(sorted(ks), sorted(fls), sorted(frs)):
        lhs = batch + list(fl) + list(k)
        nn_rhs, nt_rhs = batch + list(k) + list(fr), batch + list(fr) + list(k)
        rhs_nt = list(sr) == nt_rhs != nn_rhs
        cost = ((list(sl) != lhs) * n(sl) + (list(sr) not in (nn_rhs, nt_rhs)) * n(sr)
                + (batch + list(fl) + list(fr) != list(out)) * n(out))
        yield cost, (sl, x_l, lhs), (sr, x_r, nt_rhs if rhs_nt else nn_rhs), rhs_nt, (fl, k, fr)

  _, (sl, x_l, lhs_order), (sr, x_r, rhs_order), rhs_nt, (fl, k, fr) = min(
      plans(), key=lambda plan: plan[0])
  order = batch + list(fl) + list(fr)
  lead = (n(batch),) if batch else ()
  lhs = _materialize(x_l, tuple(sl.index(c) for c in lhs_order), lead + (n(fl), n(k)))
  rhs = _materialize(x_r, tuple(sr.index(c) for c in rhs_order),
                     lead + ((n(fr), n(k)) if rhs_nt else (n(k), n(fr))))
  y = jnp.einsum("...mk,...nk->...mn" if rhs_nt else "...mk,...kn->...mn", lhs, rhs,
                 preferred_element_type=F32)
  if order == list(out):
    return y.reshape([size[c] for c in out])
  # Materialised in the dot's own order first: XLA would fold a bare transpose into the dot,
  # whose output layout then sends it to the slow bf16 kernel.
  y = jax.lax.optimization_barrier(y.reshape(-1)).reshape([size[c] for c in order])
  return jnp.transpose(y, [order.index(c) for c in out])


@jax.custom_vjp
def _materialized_cotangent(x: jax.Array) -> jax.Array:
  return x


def _materialized_cotangent_fwd(x):
  return x, None


def _materialized_cotangent_bwd(_, g):
  return (jax.lax.optimization_barrier(g),)


_materialized_cotangent.defvjp(_materialized_cotangent_fwd, _materialized_cotangent_bwd)


def cotangent_barrier(x: jax.Array) -> jax.Array:
  """x, whose cotangent is materialised once in the backward pass.

  Without it XLA's CPU fusion recomputes the residual stream's cotangent, a long elementwise
  chain back through every later block, inside each consumer (the transposed copies of the
  weight gradients): quadratic in depth. A barrier on an unreshaped array keeps its sharding.
  """
  return _materialized_cotangent(x)


def qkv_projection(x: jax.Array, w_qkv: jax.Array, dtype: layers.Dtype
                   ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """x [B, L, D] @ w_qkv [D, 3, H, Dh] -> q, k, v [B, H, L, Dh] (float32).

  One [B L, D] x [D, 3 H Dh] matmul in the natural layout, materialised, then transposed
  head-major. XLA's CPU layout assignment otherwise computes it as w^T x^T: a transposed copy of
  the kernel in every step (the frozen teacher's too), and a weight gradient that AdamW reads
  transposed.
  """
  b, l, d = x.shape
  _, t, h, dh = w_qkv.shape
  y = jax.lax.optimization_barrier(
      layers.einsum("bld,dj->blj", x, w_qkv.reshape(d, t * h * dh), dtype))
  y = y.reshape(b, l, t, h, dh).transpose(2, 0, 3, 1, 4)
  return y[0], y[1], y[2]


OPS = dataclasses.replace(layers.PORTABLE, name="cpu_layout", dot=canonical_einsum,
                          qkv_projection=qkv_projection, block_input=cotangent_barrier)
