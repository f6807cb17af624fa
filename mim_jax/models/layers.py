"""Transformer building blocks shared by the student, the decoders and the teachers.

One block implementation serves every ViT in the codebase: the converters of the teachers map
their checkpoints onto these parameter names, so there is a single attention and a single MLP to
optimise and to shard.

Precision: parameters are always float32. `dtype="bfloat16"` makes every matmul take bfloat16
inputs and accumulate in float32 (`preferred_element_type`), the form TPUs and GPUs run natively;
the backward matmuls take bfloat16 operands too (custom VJP: autodiff would hand them the float32
cotangent). `stream_dtype` is the dtype of the activations between ops: the residual stream,
the LayerNorm, matmul, MLP and attention outputs and the attention scores. float32 by default
(the student: its gradients flow through them). The frozen teacher runs with
`stream_dtype=bfloat16` when its dtype is bf16 (`teachers.network`): it has no backward pass, so
no float32 copy of its activations is needed. What stays float32 whatever `stream_dtype`:
matmul accumulation, the LayerNorm statistics (mean, variance: a bf16 mean of 768 values loses
the digits the subtraction needs), the softmax (max, exponentials, their sum: computed from the
stored scores inside one fusion and stored in `stream_dtype`); they cost no HBM traffic, only the
stored results do.

Platform-specific code: these layers are written once, for every platform. Where one platform's
compiler is served better by another program than the plain one, the layers call an entry of the
active `PlatformOps` record instead: the matmul of a low-precision `einsum`, the qkv projection,
the residual stream entering a `Block`, the attention of `Attention` (see `PlatformOps`). The
default, `PORTABLE`, is the plain program: one einsum per matmul, explicit softmax attention, so
sharding propagation keeps every operand's sharding. `platforms.select` picks the record for the
target once (the train step enters it with `use_platform_ops`); the records other than
`PORTABLE` live in their own modules (`cpu_layout.py`: the single-CPU-device layout).

Logical axis names used for sharding: batch, length, embed, heads, kv, mlp, vocab.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import threading
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
F32 = jnp.float32


# --------------------------------------------------------------------------------------------
# Trace-time settings: the platform's ops, and whether a scanned stack is being traced.
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PlatformOps:
  """The entries through which the layers run platform-specific code; chosen once per step
  (`platforms.select`), active inside `use_platform_ops`. Each entry computes the values
  `PORTABLE`'s does (exactly in float32; a fused kernel may round differently); `select` must
  not choose a record whose entries would change a sharding for a mesh where one is sharded.

  name: says which record it is (messages, tests).
  dot(spec, a, b) -> float32 array: `einsum(spec, a, b)` of operands already cast to a dtype
    other than float32 (the forward and both backward products of a low-precision `einsum`).
  qkv_projection(x [B, L, D], w_qkv [D, 3, H, Dh] float32 parameter, dtype)
    -> (q, k, v), each [B, H, L, Dh] float32 (no bias).
  block_input(x [B, L, D]) -> x: the residual stream as each `Block` receives it (the same
    values; a platform may change how its cotangent is computed).
  attention(q [B, H, Lq, Dh], k, v [B, H, Lk, Dh] (the stream dtype: float32, or bfloat16 for
    a bf16 teacher), bias (added to the logits, broadcastable to [B, H, Lq, Lk], or None),
    dtype (of the matmul operands), dropout (None, or a function applied to the probabilities
    before they weight v), return_probs (bool))
    -> (out [B, H, Lq, Dh] in q's dtype, probs [B, H, Lq, Lk] float32 when return_probs else
    None). Scores are scaled by Dh ** -0.5. An entry that cannot apply its kernel to a call
    (dropout, return_probs, a bias or a dtype it does not take) returns `softmax_attention`'s
    result.
  """
  name: str
  dot: Callable[[str, jax.Array, jax.Array], jax.Array]
  qkv_projection: Callable[[jax.Array, jax.Array, Dtype], tuple[jax.Array, ...]]
  block_input: Callable[[jax.Array], jax.Array]
  attention: Callable[..., tuple[jax.Array, Optional[jax.Array]]]


_TRACE = threading.local()


@contextlib.contextmanager
def _trace_setting(name: str, value: Any):
  """Sets the thread-local trace-time setting `name` for the code traced inside."""
  previous = getattr(_TRACE, name, None)
  setattr(_TRACE, name, value)
  try:
    yield
  finally:
    setattr(_TRACE, name, previous)


def use_platform_ops(ops: PlatformOps):
  """The layers traced inside run `ops`' entries (`platforms.select` picks them)."""
  return _trace_setting("ops", ops)


def platform_ops() -> PlatformOps:
  """The active `PlatformOps`: `PORTABLE` outside `use_platform_ops`."""
  return getattr(_TRACE, "ops", None) or PORTABLE


def scanned_stack():
  """Matmuls traced inside run in one layer of a scanned stack of blocks (`vit.ScannedLayer`):
  see `einsum`'s `b_is_param`."""
  return _trace_setting("scanned", True)


# --------------------------------------------------------------------------------------------
# Mixed-precision einsum with bfloat16 backward.
# --------------------------------------------------------------------------------------------
def _transpose_specs(spec: str) -> tuple[str, str]:
  """For 'A,B->C' returns the specs of the two cotangents: 'C,B->A' and 'C,A->B'.

  The cotangent comes first in both: jaxlib 0.10.2's CPU DotThunk rejects some batched
  bf16 x bf16 -> f32 dots (e.g. 'bqhk,bhqs->bshk', the key gradient of attention) that it runs
  with the operands swapped. tests/test_layers.py pins this at ViT-B shapes.
  """
  ins, out = spec.split("->")
  a, b = ins.split(",")
  return f"{out},{b}->{a}", f"{out},{a}->{b}"


def plain_dot(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
  """einsum(spec, a, b) accumulated and returned in float32: one dot (`PORTABLE.dot`)."""
  return jnp.einsum(spec, a, b, preferred_element_type=F32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3, 4))
def _mixed_einsum(spec: str, dtype: Dtype, dot: Callable, recast_b: bool,
                  a_fn: Optional[Callable], a: jax.Array, b: jax.Array) -> jax.Array:
  a = a if a_fn is None else a_fn(a)
  return dot(spec, a.astype(dtype), b.astype(dtype))


def _mixed_einsum_fwd(spec, dtype, dot, recast_b, a_fn, a, b):
  b_c = b.astype(dtype)
  if a_fn is None:
    a_c = a.astype(dtype)
    out, saved_a = dot(spec, a_c, b_c), a_c
  else:  # keep a_fn's input, not its output (recomputed in the backward pass)
    out, saved_a = dot(spec, a_fn(a).astype(dtype), b_c), a
  # Residuals keep the original dtypes' zeros so the cotangents come back in them.
  return out, (saved_a, b if recast_b else b_c, jnp.zeros((), a.dtype), jnp.zeros((), b.dtype))


def _mixed_einsum_bwd(spec, dtype, dot, recast_b, a_fn, res, g):
  saved_a, b_c, a_proto, b_proto = res
  b_c = b_c.astype(dtype)
  spec_a, spec_b = _transpose_specs(spec)
  g_c = g.astype(dtype)
  if a_fn is None:
    a_c, a_fn_vjp = saved_a, None
  else:
    # The barrier keeps XLA from merging this recomputation with the forward's (which would
    # store a_fn's output again).
    act, a_fn_vjp = jax.vjp(a_fn, jax.lax.optimization_barrier(saved_a))
    a_c = act.astype(dtype)
  da = dot(spec_a, g_c, b_c)
  db = dot(spec_b, g_c, a_c)
  if a_fn_vjp is not None:
    da = a_fn_vjp(da.astype(act.dtype))[0]
  return da.astype(a_proto.dtype), db.astype(b_proto.dtype)


_mixed_einsum.defvjp(_mixed_einsum_fwd, _mixed_einsum_bwd)


def einsum(spec: str, a: jax.Array, b: jax.Array, dtype: Dtype = F32,
           b_is_param: bool = False, a_fn: Optional[Callable] = None) -> jax.Array:
  """Einsum of two operands with inputs cast to `dtype` and a float32 result.

  Every index of an operand must appear in the other operand or in the output (true of every
  matmul here), so that the backward pass is two einsums of the same kind. Below float32 each
  of the three products is the active platform's `dot`.

  `a_fn`: an elementwise function (an activation) applied to `a` first: `einsum(spec,
  a_fn(a), b)`. Below float32 the backward pass keeps `a`, not `a_fn(a)`, and computes
  `a_fn(a)` again (one fused elementwise pass on TPU): autodiff would keep both, and for the
  exact GELU its erfc term too, each as large as the MLP's hidden activations. In float32 it is
  autodiff's own (CPU runs keep their numbers).

  `b_is_param`: b is a parameter as stored (not reshaped or computed). Inside a scanned stack
  (`scanned_stack()`) the backward pass then casts it again instead of keeping its `dtype` copy:
  the scan would save every layer's copy (gathered, under fsdp) as a stacked residual, while the
  float32 layer slice it forwards costs nothing (it made the scanned bf16 step need more memory
  than float32). Outside a scan the copy is an ordinary residual that XLA may keep or recompute.
  """
  if jnp.dtype(dtype) == jnp.dtype(F32):
    return plain_dot(spec, a if a_fn is None else a_fn(a), b)
  recast = b_is_param and bool(getattr(_TRACE, "scanned", None))
  return _mixed_einsum(spec, jnp.dtype(dtype), platform_ops().dot, recast, a_fn, a, b)


# --------------------------------------------------------------------------------------------
# Initialisers.
# --------------------------------------------------------------------------------------------
def trunc_normal(std: float = 0.02) -> Callable:
  """Truncated normal in [-2 std, 2 std], timm's trunc_normal_(std) convention."""
  return jax.nn.initializers.truncated_normal(std, lower=-2.0, upper=2.0)


# Xavier-uniform of kernels stored with extra axes, fans over the flattened input / output axes:
# the fused qkv [D, 3, H, Dh] (fan_in D, fan_out 3 H Dh) and the patch kernel [p, p, C, D]
# (fan_in p p C), as MAE initialises the torch Linear / flattened conv they stand for.
QKV_INIT = nn.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2, 3))
PATCH_INIT = nn.initializers.xavier_uniform(in_axis=(0, 1, 2), out_axis=3)


def partitioned(init: Callable, names: Sequence[Optional[str]]) -> Callable:
  return nn.with_logical_partitioning(init, tuple(names))


# --------------------------------------------------------------------------------------------
# Layers.
# --------------------------------------------------------------------------------------------
class Dense(nn.Module):
  """y = x @ W + b over the last axis, with logical names for the kernel axes."""
  features: int
  use_bias: bool = True
  dtype: Dtype = F32
  kernel_axes: tuple[Optional[str], Optional[str]] = ("embed", "mlp")
  kernel_init: Callable = nn.initializers.xavier_uniform()
  bias_init: Callable = nn.initializers.zeros
  stream_dtype: Dtype = F32  # of the output (see the module's docstring)
  act_in: Optional[str] = None  # an activation (`ACTIVATIONS`) applied to x first

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", partitioned(self.kernel_init, self.kernel_axes),
                        (x.shape[-1], self.features), F32)
    # Over the last axis as it is: a reshape to [B L, D] would be a relayout copy on TPU,
    # whose tiles pad the token axis (197 -> 200) but not a flattened one.
    lead = "abcdefgh"[:x.ndim - 1]
    a_fn = None if self.act_in is None else activation(self.act_in)
    y = einsum(f"{lead}i,io->{lead}o", x, kernel, self.dtype, b_is_param=True, a_fn=a_fn)
    y = y.astype(self.stream_dtype)
    if self.use_bias:
      y = y + self.param("bias", partitioned(self.bias_init, self.kernel_axes[1:]),
                         (self.features,), F32).astype(self.stream_dtype)
    return y


class LayerNorm(nn.Module):
  """LayerNorm computed in float32 (statistics and affine), returned in `stream_dtype`, with
  logical names on scale and bias."""
  epsilon: float = 1e-6
  use_affine: bool = True
  stream_dtype: Dtype = F32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(F32)
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + self.epsilon)
    if self.use_affine:
      d = x.shape[-1]
      y = y * self.param("scale", partitioned(nn.initializers.ones, ("embed",)), (d,), F32)
      y = y + self.param("bias", partitioned(nn.initializers.zeros, ("embed",)), (d,), F32)
    return y.astype(self.stream_dtype)


def layer_norm(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """LayerNorm without affine over the last axis (targets, analysis)."""
  return LayerNorm(epsilon=eps, use_affine=False).apply({}, x)


def quick_gelu(x: jax.Array) -> jax.Array:
  return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable] = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),  # exact erf GELU (torch default)
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "quick_gelu": quick_gelu,
    "relu": jax.nn.relu,
}


def activation(name: str) -> Callable:
  if name not in ACTIVATIONS:
    raise ValueError(f"Unknown activation {name!r}; known: {sorted(ACTIVATIONS)}.")
  return ACTIVATIONS[name]


def drop_path(rate: Any) -> nn.Module:
  """Stochastic depth on [B, L, D]: drops the whole residual branch per example (one draw per
  example, broadcast over tokens and channels; kept ones scaled by 1 / (1 - rate); rng stream
  'dropout'). `rate` may be a traced scalar (a scanned stack's per-layer rate)."""
  if isinstance(rate, jax.Array):
    return TracedDropPath(rate)
  return nn.Dropout(rate, broadcast_dims=(1, 2))


class TracedDropPath(nn.Module):
  """`nn.Dropout(rate, broadcast_dims=(1, 2))` for a traced rate (no Python test on it)."""
  rate: jax.Array

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    if deterministic:
      return x
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (x.shape[0], 1, 1))
    return jax.lax.select(jnp.broadcast_to(mask, x.shape), x / keep.astype(x.dtype),
                          jnp.zeros_like(x))


def qkv_projection(x: jax.Array, w_qkv: jax.Array, dtype: Dtype
                   ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """x [B, L, D] @ w_qkv [D, 3, H, Dh] -> q, k, v [B, H, L, Dh] (float32): one einsum each
  (`PORTABLE.qkv_projection`). Three products rather than one [3, B, H, L, Dh]: on TPU the
  stacked one costs a pass that splits it (and, in the backward pass, one that stacks the three
  gradients again), ~0.1 GB of HBM per ViT-B block at 64 x 197 tokens (docs/tpu_cost.md)."""
  return tuple(einsum("bld,dhk->bhlk", x, w_qkv[:, i], dtype) for i in range(3))


def softmax_attention(q: jax.Array, k: jax.Array, v: jax.Array, bias: Optional[jax.Array],
                      dtype: Dtype, dropout: Optional[Callable[[jax.Array], jax.Array]] = None,
                      return_probs: bool = False) -> tuple[jax.Array, Optional[jax.Array]]:
  """Explicit softmax attention (`PORTABLE.attention`; the arguments as `PlatformOps` says).

  q [B, H, Lq, Dh], k, v [B, H, Lk, Dh] -> (out [B, H, Lq, Dh], probs [B, H, Lq, Lk] or None).
  Faster than jax.nn.dot_product_attention on CPU, and it gives the probabilities for free.
  The scores and probabilities are stored in q's dtype (bf16 for a bf16 teacher: half the HBM
  traffic of the [B, H, L, L] arrays); the softmax itself runs in float32 inside its fusion.

  Below float32, without bias, dropout or returned probabilities, the backward pass keeps no
  [B, H, Lq, Lk] array: it keeps each row's log-sum-exp and computes the probabilities again
  from q and k (`_recomputed_attention`; one more q k^T product, ~1% of a ViT-B step's FLOPs).
  Otherwise (and always in float32: CPU runs keep their numbers) autodiff keeps them.
  """
  if (bias is None and dropout is None and not return_probs
      and jnp.dtype(dtype) != jnp.dtype(F32)):
    return _recomputed_attention(jnp.dtype(dtype), platform_ops().dot, q, k, v), None
  stream = q.dtype
  logits = einsum("bhqk,bhsk->bhqs", q * (q.shape[-1] ** -0.5), k, dtype).astype(stream)
  if bias is not None:
    logits = logits + bias.astype(stream)
  probs = jax.nn.softmax(logits.astype(F32), axis=-1).astype(stream)
  dropped = probs if dropout is None else dropout(probs)
  out = einsum("bhqs,bhsk->bhqk", dropped, v, dtype).astype(stream)
  return out, (probs.astype(F32) if return_probs else None)


def _attention_probs(dtype: Dtype, dot: Callable, q: jax.Array, k: jax.Array,
                     lse: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
  """(softmax(q k^T / sqrt(Dh)) in q's dtype, each row's log-sum-exp [B, H, Lq] float32); with
  `lse` given, the probabilities are exp(logits - lse) (the backward pass's recomputation)."""
  stream = q.dtype
  logits = dot("bhqk,bhsk->bhqs", (q * (q.shape[-1] ** -0.5)).astype(dtype), k.astype(dtype))
  logits = logits.astype(stream).astype(F32)  # the scores as `softmax_attention` stores them
  if lse is not None:
    return jnp.exp(logits - lse[..., None]).astype(stream), lse
  top = jnp.max(logits, -1, keepdims=True)
  unnormalized = jnp.exp(logits - top)
  total = jnp.sum(unnormalized, -1, keepdims=True)
  return (unnormalized / total).astype(stream), (top + jnp.log(total))[..., 0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _recomputed_attention(dtype: Dtype, dot: Callable, q: jax.Array, k: jax.Array,
                          v: jax.Array) -> jax.Array:
  """softmax(q k^T / sqrt(Dh)) v with matmul inputs in `dtype` (below float32) and each of
  the five products the platform's `dot`; the backward pass recomputes the probabilities."""
  return _recomputed_attention_fwd(dtype, dot, q, k, v)[0]


def _recomputed_attention_fwd(dtype, dot, q, k, v):
  probs, lse = _attention_probs(dtype, dot, q, k)
  out = dot("bhqs,bhsk->bhqk", probs.astype(dtype), v.astype(dtype)).astype(q.dtype)
  return out, (q, k, v, lse)


def _recomputed_attention_bwd(dtype, dot, res, g):
  q, k, v, lse = res
  stream = q.dtype
  # The barrier keeps XLA from merging the recomputation with the forward's scores (which
  # would keep them again).
  q, k = jax.lax.optimization_barrier((q, k))
  probs, _ = _attention_probs(dtype, dot, q, k, lse)
  g_c = g.astype(dtype)
  # The cotangent first in each product, as `_transpose_specs` orders them (jaxlib's CPU dots).
  dv = dot("bhqk,bhqs->bhsk", g_c, probs.astype(dtype))
  dprobs = dot("bhqk,bhsk->bhqs", g_c, v.astype(dtype)).astype(stream).astype(F32)
  p32 = probs.astype(F32)
  dlogits = (p32 * (dprobs - jnp.sum(dprobs * p32, -1, keepdims=True))).astype(dtype)
  scale = q.shape[-1] ** -0.5
  dq = dot("bhqs,bhsk->bhqk", dlogits, k.astype(dtype)) * scale
  dk = dot("bhqs,bhqk->bhsk", dlogits, (q * scale).astype(dtype))
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


_recomputed_attention.defvjp(_recomputed_attention_fwd, _recomputed_attention_bwd)


def identity(x: jax.Array) -> jax.Array:
  return x


PORTABLE = PlatformOps(name="portable", dot=plain_dot, qkv_projection=qkv_projection,
                       block_input=identity, attention=softmax_attention)


class Attention(nn.Module):
  """Multi-head self-attention with a fused qkv kernel [D, 3, H, Dh].

  The projection and the attention are the active platform's (`PlatformOps.qkv_projection`,
  `.attention`; by default one einsum and `softmax_attention`). `bias` is added to the logits:
  relative position bias, [H, L, L] or [B, H, L, L]. Returns (out [B, L, D], probs [B, H, L, L]
  or None).
  """
  num_heads: int
  qkv_bias: bool = True
  dtype: Dtype = F32
  attn_drop: float = 0.0
  qkv_init: Optional[Callable] = None
  out_init: Callable = nn.initializers.xavier_uniform()
  stream_dtype: Dtype = F32  # of q, k, v, the scores and the output

  @nn.compact
  def __call__(self, x: jax.Array, bias: Optional[jax.Array] = None,
               deterministic: bool = True, return_probs: bool = False):
    b, l, d = x.shape
    h = self.num_heads
    if d % h:
      raise ValueError(f"width {d} is not divisible by num_heads {h}")
    dh = d // h
    qkv_init = self.qkv_init or QKV_INIT
    w_qkv = self.param("qkv_kernel", partitioned(qkv_init, ("embed", None, "heads", "kv")),
                       (d, 3, h, dh), F32)
    # Head-major q, k, v [B, H, L, Dh]: jaxlib 0.10.2's CPU DotThunk rejects some backward dots
    # of the [B, L, H, Dh] layout in bf16 (tests/test_layers.py pins the working form).
    ops = platform_ops()
    qkv = [y.astype(self.stream_dtype) for y in ops.qkv_projection(x, w_qkv, self.dtype)]
    if self.qkv_bias:
      b_qkv = self.param("qkv_bias", partitioned(nn.initializers.zeros, (None, "heads", "kv")),
                         (3, h, dh), F32).astype(self.stream_dtype)
      qkv = [y + b_qkv[i, :, None] for i, y in enumerate(qkv)]
    q, k, v = qkv
    q = nn.with_logical_constraint(q, ("batch", "heads", "length", "kv"))
    dropout = None
    if self.attn_drop > 0.0 and not deterministic:
      dropout = functools.partial(nn.Dropout(self.attn_drop), deterministic=False)
    out, probs = ops.attention(q, k, v, bias, self.dtype, dropout, return_probs)
    w_out = self.param("out_kernel", partitioned(
        lambda key, shape, dtype=F32: self.out_init(key, (d, d), dtype).reshape(shape),
        ("heads", "kv", "embed")), (h, dh, d), F32)
    y = einsum("bhqk,hkd->bqd", out, w_out, self.dtype, b_is_param=True).astype(self.stream_dtype)
    y = y + self.param("out_bias", partitioned(nn.initializers.zeros, ("embed",)), (d,),
                       F32).astype(self.stream_dtype)
    return y, probs


class Mlp(nn.Module):
  hidden: int
  act: str = "gelu"
  dtype: Dtype = F32
  fc2_init: Callable = nn.initializers.xavier_uniform()
  fc1_init: Callable = nn.initializers.xavier_uniform()
  stream_dtype: Dtype = F32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    y = Dense(self.hidden, dtype=self.dtype, kernel_axes=("embed", "mlp"),
              kernel_init=self.fc1_init, stream_dtype=self.stream_dtype, name="fc1")(x)
    # The activation is fc2's `act_in`: below float32 the backward pass keeps only this
    # pre-activation, in the stream's dtype, and recomputes the activation from it (autodiff
    # would keep the activation too, and the exact GELU's erfc term: three [B, L, mlp] arrays).
    y = nn.with_logical_constraint(y, ("batch", "length", "mlp"))
    return Dense(d, dtype=self.dtype, kernel_axes=("mlp", "embed"), kernel_init=self.fc2_init,
                 stream_dtype=self.stream_dtype, act_in=self.act, name="fc2")(y)


class Block(nn.Module):
  """Pre-LN transformer block: x + DropPath(ls1 * Attn(LN(x))), then the same with the MLP.

  x enters through the active platform's `block_input` (an identity by default: `PlatformOps`).
  Returns (x, attention probabilities or None).
  """
  num_heads: int
  mlp_dim: int
  act: str = "gelu"
  ln_eps: float = 1e-6
  qkv_bias: bool = True
  drop_path: float = 0.0
  attn_drop: float = 0.0
  layer_scale: Optional[float] = None
  dtype: Dtype = F32
  qkv_init: Optional[Callable] = None
  out_init: Callable = nn.initializers.xavier_uniform()
  fc2_init: Callable = nn.initializers.xavier_uniform()
  fc1_init: Callable = nn.initializers.xavier_uniform()
  stream_dtype: Dtype = F32  # the residual stream's and every activation's (module docstring)

  @nn.compact
  def __call__(self, x: jax.Array, bias: Optional[jax.Array] = None,
               deterministic: bool = True, return_probs: bool = False):
    x = platform_ops().block_input(x.astype(self.stream_dtype))
    s = self.stream_dtype
    y, probs = Attention(self.num_heads, self.qkv_bias, self.dtype, self.attn_drop,
                         self.qkv_init, self.out_init, stream_dtype=s, name="attn")(
                             LayerNorm(self.ln_eps, stream_dtype=s, name="ln1")(x), bias,
                             deterministic, return_probs)
    x = x + drop_path(self.drop_path)(self._scale(y, "ls1"), deterministic)
    y = Mlp(self.mlp_dim, self.act, self.dtype, self.fc2_init, self.fc1_init, stream_dtype=s,
            name="mlp")(LayerNorm(self.ln_eps, stream_dtype=s, name="ln2")(x))
    x = x + drop_path(self.drop_path)(self._scale(y, "ls2"), deterministic)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    return x, probs

  def _scale(self, y: jax.Array, name: str) -> jax.Array:
    if self.layer_scale is None:
      return y
    gamma = self.param(name, partitioned(nn.initializers.constant(self.layer_scale), ("embed",)),
                       (y.shape[-1],), F32)
    return y * gamma.astype(y.dtype)


# --------------------------------------------------------------------------------------------
# Patch embedding and position embeddings.
# --------------------------------------------------------------------------------------------
def patchify(images: jax.Array, patch: int) -> jax.Array:
  """[B, H, W, C] -> [B, N, p*p*C], patches in row-major order, pixels (p, q, c) inside."""
  b, hh, ww, c = images.shape
  gh, gw = hh // patch, ww // patch
  x = images.reshape(b, gh, patch, gw, patch, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, gh * gw, patch * patch * c)


# Rematerialisation of a block's activations in the backward pass (`student.remat`): what each
# block keeps from its forward pass. "none": everything (no recomputation); "full": nothing but
# its input (the whole block runs again); "dots": the matmul outputs; "dots_no_batch": matmul
# outputs without a batch dimension (weights-only products: in a ViT nearly nothing, so close to
# "full"); "offload": those moved to host memory (TPU/GPU).
REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "offload": jax.checkpoint_policies.offload_dot_with_no_batch_dims("device", "pinned_host"),
}


def block_class(remat: str = "none") -> type:
  """`Block`, or `Block` under `nn.remat` with the named policy (same parameters, same
  numbers; activations traded for recomputation)."""
  if remat == "none":
    return Block
  if remat not in REMAT_POLICIES:
    raise ValueError(f"Unknown remat {remat!r}: use 'none' or one of {sorted(REMAT_POLICIES)}.")
  # static: `deterministic` and `return_probs` (argument 0 is the module).
  return nn.remat(Block, policy=REMAT_POLICIES[remat], static_argnums=(3, 4))


class PatchEmbed(nn.Module):
  """Conv with stride = kernel = patch, as a matmul on flattened (p, q, c) patches.

  The kernel is stored as [p, p, C, D] (HWIO, like a Flax conv). `kernel_init` (None: MAE's
  xavier-uniform on the flattened kernel) receives the [p, p, C, D] shape.
  """
  patch: int
  width: int
  use_bias: bool = True
  dtype: Dtype = F32
  kernel_init: Optional[Callable] = None
  stream_dtype: Dtype = F32

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    c = images.shape[-1]
    kernel = self.param("kernel", partitioned(self.kernel_init or PATCH_INIT,
                                              (None, None, None, "embed")),
                        (self.patch, self.patch, c, self.width), F32)
    x = patchify(images, self.patch)
    y = einsum("bnk,kd->bnd", x, kernel.reshape(-1, self.width), self.dtype)
    y = y.astype(self.stream_dtype)
    if self.use_bias:
      y = y + self.param("bias", partitioned(nn.initializers.zeros, ("embed",)),
                         (self.width,), F32).astype(self.stream_dtype)
    return y


def patch_grid(image_size: int, patch: int) -> tuple[int, int]:
  """(g, g) tokens of a square image of side `image_size` cut into patch x patch patches."""
  if image_size % patch:
    raise ValueError(f"image_size {image_size} is not a multiple of patch {patch}")
  return (image_size // patch, image_size // patch)


def posemb_sincos_2d(grid: tuple[int, int], width: int, cls_token: bool = False) -> jax.Array:
  """MAE's fixed 2-D sin-cos embedding, [gh*gw (+1), width].

  The first width/2 channels encode the column (x) index, the second width/2 the row (y); each
  half is [sin, cos] with omega_i = 1 / 10000^(i / (width/4)). With `cls_token` a zero row is
  prepended. (Not big_vision's variant, whose omega is i / (width/4 - 1).)
  """
  if width % 4:
    raise ValueError(f"sin-cos position embedding needs width % 4 == 0, got {width}")
  gh, gw = grid
  omega = 1.0 / 10000 ** (jnp.arange(width // 4, dtype=F32) / (width / 4.0))
  ys, xs = jnp.meshgrid(jnp.arange(gh, dtype=F32), jnp.arange(gw, dtype=F32), indexing="ij")

  def emb(pos):
    out = pos.reshape(-1)[:, None] * omega[None, :]
    return jnp.concatenate([jnp.sin(out), jnp.cos(out)], axis=1)

  pe = jnp.concatenate([emb(xs), emb(ys)], axis=1).astype(F32)
  if cls_token:
    pe = jnp.concatenate([jnp.zeros((1, width), F32), pe], axis=0)
  return pe
