"""Transformer building blocks shared by the student, the decoders and the teachers.

One block implementation serves every ViT in the codebase: the converters of the teachers map
their checkpoints onto these parameter names, so there is a single attention and a single MLP to
optimise and to shard.

Precision: parameters are always float32. `dtype="bfloat16"` makes every matmul take bfloat16
inputs and accumulate in float32 (`preferred_element_type`), the form TPUs and GPUs run natively;
the backward matmuls take bfloat16 operands too (custom VJP: autodiff would hand them the float32
cotangent). Everything else (LayerNorm, softmax, residual stream) stays float32.

Matmul layout: by default (every TPU/GPU target, and CPU meshes of several devices) a matmul is
one plain einsum, so sharding propagation keeps every operand's sharding. Inside
`with cpu_matmul_layout():` (entered by the train step only when it is compiled for a single CPU
device, `Setup.cpu_matmul_layout`) bf16 operands that are not already in a layout XLA's CPU
backend sends to its fast bf16 kernel ([batch, M, K] x [batch, K, N] or [batch, N, K]) are copied
into one first; that copy flattens arrays behind an optimization barrier, which would destroy a
sharded axis, hence never on a mesh. The same switch
materialises each block's residual cotangent once (`cpu_cotangent_barrier`, float32 and bf16):
XLA's CPU fusion otherwise recomputes it inside every consumer, quadratic in depth; and it
computes the qkv projection in its natural layout (`qkv_projection`).

Logical axis names used for sharding: batch, length, embed, heads, kv, mlp, vocab.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import threading
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
F32 = jnp.float32


# --------------------------------------------------------------------------------------------
# Mixed-precision einsum with bfloat16 backward.
# --------------------------------------------------------------------------------------------
_LAYOUT = threading.local()


@contextlib.contextmanager
def _trace_flag(name: str, value: bool):
  """Sets the thread-local trace-time flag `name` for the code traced inside."""
  previous = getattr(_LAYOUT, name, False)
  setattr(_LAYOUT, name, value)
  try:
    yield
  finally:
    setattr(_LAYOUT, name, previous)


def cpu_matmul_layout(enabled: bool = True):
  """Matmuls traced inside use the single-CPU-device layout (see the module docstring)."""
  return _trace_flag("cpu", enabled)


def scanned_stack():
  """Matmuls traced inside run in one layer of a scanned stack of blocks (`vit.ScannedLayer`):
  see `einsum`'s `b_is_param`."""
  return _trace_flag("scanned", True)


def _cpu_layout_active() -> bool:
  return getattr(_LAYOUT, "cpu", False)


def _transpose_specs(spec: str) -> tuple[str, str]:
  """For 'A,B->C' returns the specs of the two cotangents: 'C,B->A' and 'C,A->B'.

  The cotangent comes first in both: jaxlib 0.10.2's CPU DotThunk rejects some batched
  bf16 x bf16 -> f32 dots (e.g. 'bqhk,bhqs->bshk', the key gradient of attention) that it runs
  with the operands swapped. tests/test_layers.py pins this at ViT-B shapes.
  """
  ins, out = spec.split("->")
  a, b = ins.split(",")
  return f"{out},{b}->{a}", f"{out},{a}->{b}"


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


def _canonical_einsum(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
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


def _plain_einsum(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.einsum(spec, a, b, preferred_element_type=F32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _mixed_einsum(spec: str, dtype: Dtype, cpu_layout: bool, recast_b: bool, a: jax.Array,
                  b: jax.Array) -> jax.Array:
  dot = _canonical_einsum if cpu_layout else _plain_einsum
  return dot(spec, a.astype(dtype), b.astype(dtype))


def _mixed_einsum_fwd(spec, dtype, cpu_layout, recast_b, a, b):
  a_c, b_c = a.astype(dtype), b.astype(dtype)
  out = (_canonical_einsum if cpu_layout else _plain_einsum)(spec, a_c, b_c)
  # Residuals keep the original dtypes' zeros so the cotangents come back in them.
  return out, (a_c, b if recast_b else b_c, jnp.zeros((), a.dtype), jnp.zeros((), b.dtype))


def _mixed_einsum_bwd(spec, dtype, cpu_layout, recast_b, res, g):
  a_c, b_c, a_proto, b_proto = res
  b_c = b_c.astype(dtype)
  dot = _canonical_einsum if cpu_layout else _plain_einsum
  spec_a, spec_b = _transpose_specs(spec)
  g_c = g.astype(dtype)
  da = dot(spec_a, g_c, b_c)
  db = dot(spec_b, g_c, a_c)
  return da.astype(a_proto.dtype), db.astype(b_proto.dtype)


_mixed_einsum.defvjp(_mixed_einsum_fwd, _mixed_einsum_bwd)


@jax.custom_vjp
def _materialized_cotangent(x: jax.Array) -> jax.Array:
  return x


def _materialized_cotangent_fwd(x):
  return x, None


def _materialized_cotangent_bwd(_, g):
  return (jax.lax.optimization_barrier(g),)


_materialized_cotangent.defvjp(_materialized_cotangent_fwd, _materialized_cotangent_bwd)


def cpu_cotangent_barrier(x: jax.Array) -> jax.Array:
  """x, whose cotangent is materialised once in the backward pass (inside
  `cpu_matmul_layout()` only; elsewhere x itself).

  Without it XLA's CPU fusion recomputes the residual stream's cotangent, a long elementwise
  chain back through every later block, inside each consumer (the transposed copies of the
  weight gradients): quadratic in depth. A barrier on an unreshaped array keeps its sharding.
  """
  return _materialized_cotangent(x) if _cpu_layout_active() else x


def einsum(spec: str, a: jax.Array, b: jax.Array, dtype: Dtype = F32,
           b_is_param: bool = False) -> jax.Array:
  """Einsum of two operands with inputs cast to `dtype` and a float32 result.

  Every index of an operand must appear in the other operand or in the output (true of every
  matmul here), so that the backward pass is two einsums of the same kind.

  `b_is_param`: b is a parameter as stored (not reshaped or computed). Inside a scanned stack
  (`scanned_stack()`) the backward pass then casts it again instead of keeping its `dtype` copy:
  the scan would save every layer's copy (gathered, under fsdp) as a stacked residual, while the
  float32 layer slice it forwards costs nothing (it made the scanned bf16 step need more memory
  than float32). Outside a scan the copy is an ordinary residual that XLA may keep or recompute.
  """
  if jnp.dtype(dtype) == jnp.dtype(F32):
    return _plain_einsum(spec, a, b)
  recast = b_is_param and getattr(_LAYOUT, "scanned", False)
  return _mixed_einsum(spec, jnp.dtype(dtype), _cpu_layout_active(), recast, a, b)


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

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", partitioned(self.kernel_init, self.kernel_axes),
                        (x.shape[-1], self.features), F32)
    lead = x.shape[:-1]
    y = einsum("ni,io->no", x.reshape(-1, x.shape[-1]), kernel, self.dtype, b_is_param=True)
    y = y.reshape(*lead, self.features)
    if self.use_bias:
      y = y + self.param("bias", partitioned(self.bias_init, self.kernel_axes[1:]),
                         (self.features,), F32)
    return y


class LayerNorm(nn.Module):
  """LayerNorm in float32 with logical names on scale and bias."""
  epsilon: float = 1e-6
  use_affine: bool = True

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
    return y


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


def qkv_projection(x: jax.Array, w_qkv: jax.Array, dtype: Dtype) -> jax.Array:
  """x [B, L, D] @ w_qkv [D, 3, H, Dh] -> [3, B, H, L, Dh] (float32).

  Inside `cpu_matmul_layout()`: one [B L, D] x [D, 3 H Dh] matmul in the natural layout,
  materialised, then transposed head-major. XLA's CPU layout assignment otherwise computes it as
  w^T x^T: a transposed copy of the kernel in every step (the frozen teacher's too), and a
  weight gradient that AdamW reads transposed.
  """
  if not _cpu_layout_active():
    return einsum("bld,dthk->tbhlk", x, w_qkv, dtype, b_is_param=True)
  b, l, d = x.shape
  _, t, h, dh = w_qkv.shape
  y = jax.lax.optimization_barrier(einsum("bld,dj->blj", x, w_qkv.reshape(d, t * h * dh), dtype))
  return y.reshape(b, l, t, h, dh).transpose(2, 0, 3, 1, 4)


class Attention(nn.Module):
  """Multi-head self-attention with a fused qkv kernel [D, 3, H, Dh].

  Explicit softmax attention (faster than jax.nn.dot_product_attention on CPU, and it gives the
  probabilities for free). `bias` is added to the logits: relative position bias, [H, L, L] or
  [B, H, L, L]. Returns (out [B, L, D], probs [B, H, L, L] or None).
  """
  num_heads: int
  qkv_bias: bool = True
  dtype: Dtype = F32
  attn_drop: float = 0.0
  qkv_init: Optional[Callable] = None
  out_init: Callable = nn.initializers.xavier_uniform()

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
    # Head-major [B, H, L, Dh] operands: jaxlib 0.10.2's CPU DotThunk rejects some backward
    # dots of the [B, L, H, Dh] layout in bf16 (tests/test_layers.py pins the working form).
    qkv = qkv_projection(x, w_qkv, self.dtype)
    if self.qkv_bias:
      qkv = qkv + self.param("qkv_bias", partitioned(nn.initializers.zeros, (None, "heads", "kv")),
                             (3, h, dh), F32)[:, None, :, None]
    q, k, v = qkv[0], qkv[1], qkv[2]
    q = nn.with_logical_constraint(q, ("batch", "heads", "length", "kv"))
    logits = einsum("bhqk,bhsk->bhqs", q * (dh ** -0.5), k, self.dtype)
    if bias is not None:
      logits = logits + bias
    probs = jax.nn.softmax(logits, axis=-1)
    dropped = probs
    if self.attn_drop > 0.0 and not deterministic:
      dropped = nn.Dropout(self.attn_drop)(probs, deterministic=False)
    out = einsum("bhqs,bhsk->bhqk", dropped, v, self.dtype)
    w_out = self.param("out_kernel", partitioned(
        lambda key, shape, dtype=F32: self.out_init(key, (d, d), dtype).reshape(shape),
        ("heads", "kv", "embed")), (h, dh, d), F32)
    y = einsum("bhqk,hkd->bqd", out, w_out, self.dtype, b_is_param=True)
    y = y + self.param("out_bias", partitioned(nn.initializers.zeros, ("embed",)), (d,), F32)
    return y, (probs if return_probs else None)


class Mlp(nn.Module):
  hidden: int
  act: str = "gelu"
  dtype: Dtype = F32
  fc2_init: Callable = nn.initializers.xavier_uniform()
  fc1_init: Callable = nn.initializers.xavier_uniform()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    y = Dense(self.hidden, dtype=self.dtype, kernel_axes=("embed", "mlp"),
              kernel_init=self.fc1_init, name="fc1")(x)
    y = activation(self.act)(y)
    y = nn.with_logical_constraint(y, ("batch", "length", "mlp"))
    return Dense(d, dtype=self.dtype, kernel_axes=("mlp", "embed"),
                 kernel_init=self.fc2_init, name="fc2")(y)


class Block(nn.Module):
  """Pre-LN transformer block: x + DropPath(ls1 * Attn(LN(x))), then the same with the MLP.

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

  @nn.compact
  def __call__(self, x: jax.Array, bias: Optional[jax.Array] = None,
               deterministic: bool = True, return_probs: bool = False):
    x = cpu_cotangent_barrier(x)
    y, probs = Attention(self.num_heads, self.qkv_bias, self.dtype, self.attn_drop,
                         self.qkv_init, self.out_init, name="attn")(
                             LayerNorm(self.ln_eps, name="ln1")(x), bias, deterministic,
                             return_probs)
    x = x + drop_path(self.drop_path)(self._scale(y, "ls1"), deterministic)
    y = Mlp(self.mlp_dim, self.act, self.dtype, self.fc2_init, self.fc1_init, name="mlp")(
        LayerNorm(self.ln_eps, name="ln2")(x))
    x = x + drop_path(self.drop_path)(self._scale(y, "ls2"), deterministic)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    return x, probs

  def _scale(self, y: jax.Array, name: str) -> jax.Array:
    if self.layer_scale is None:
      return y
    gamma = self.param(name, partitioned(nn.initializers.constant(self.layer_scale), ("embed",)),
                       (y.shape[-1],), F32)
    return y * gamma


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

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    c = images.shape[-1]
    kernel = self.param("kernel", partitioned(self.kernel_init or PATCH_INIT,
                                              (None, None, None, "embed")),
                        (self.patch, self.patch, c, self.width), F32)
    x = patchify(images, self.patch)
    y = einsum("bnk,kd->bnd", x, kernel.reshape(-1, self.width), self.dtype)
    if self.use_bias:
      y = y + self.param("bias", partitioned(nn.initializers.zeros, ("embed",)),
                         (self.width,), F32)
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
