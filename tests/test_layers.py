"""Shared layers: mixed-precision einsum (forward and custom backward), attention maths."""
import functools
import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mim_jax.models import layers


def test_transpose_specs():
  assert layers._transpose_specs("ni,io->no") == ("no,io->ni", "no,ni->io")


@pytest.mark.parametrize("spec,sa,sb", [
    ("ni,io->no", (6, 5), (5, 4)),
    ("bhqk,bhsk->bhqs", (2, 2, 3, 4), (2, 2, 5, 4)),  # batched, as in attention
    ("bhqs,bhsk->bhqk", (2, 2, 3, 5), (2, 2, 5, 4)),
])
def test_bf16_einsum_matches_f32_forward_and_backward(spec, sa, sb):
  a = jax.random.normal(jax.random.key(0), sa)
  b = jax.random.normal(jax.random.key(1), sb)
  f = lambda dtype: jax.jit(jax.value_and_grad(
      lambda a, b: jnp.sum(jnp.sin(layers.einsum(spec, a, b, dtype))), argnums=(0, 1)))
  (v32, g32), (v16, g16) = f(jnp.float32)(a, b), f(jnp.bfloat16)(a, b)
  assert layers.einsum(spec, a, b, jnp.bfloat16).dtype == jnp.float32
  assert g16[0].dtype == jnp.float32 and g16[1].dtype == jnp.float32
  np.testing.assert_allclose(v16, v32, rtol=2e-2, atol=5e-2)  # bf16 has 8 mantissa bits
  for x16, x32 in zip(g16, g32):
    np.testing.assert_allclose(x16, x32, rtol=5e-2, atol=5e-2)
  assert not np.array_equal(g16[0], g32[0])  # the bf16 path really ran
  # In a scanned stack b is kept as the float32 parameter and cast again in the backward pass:
  # the same numbers.
  def recast_loss(a, b):
    with layers.scanned_stack():
      return jnp.sum(jnp.sin(layers.einsum(spec, a, b, jnp.bfloat16, b_is_param=True)))
  recast = jax.jit(jax.value_and_grad(recast_loss, argnums=(0, 1)))(a, b)
  chex.assert_trees_all_equal(recast, (v16, g16))


# Every matmul of the ViT (dense, attention logits and output, out-projection, patch embedding)
# and the two backward products of each.
_MODEL_SPECS = [s for spec in ("ni,io->no", "bhqk,bhsk->bhqs", "bhqs,bhsk->bhqk",
                               "bhqk,hkd->bqd", "bnk,kd->bnd")
                for s in (spec, *layers._transpose_specs(spec))]


@pytest.mark.parametrize("spec", _MODEL_SPECS)
def test_canonical_einsum_is_the_einsum(spec):
  """The single-CPU-device form (operands and product copied into the fast kernel's layouts)
  computes the einsum itself: integer-valued bf16 operands, so every sum is exact in float32."""
  dims = dict(zip("bhqskdnio", (2, 3, 5, 7, 4, 6, 9, 8, 10)))
  ins, _ = spec.split("->")
  a, b = (jax.random.randint(jax.random.key(i), [dims[c] for c in s], -3, 4).astype(jnp.bfloat16)
          for i, s in enumerate(ins.split(",")))
  got = jax.jit(functools.partial(layers._canonical_einsum, spec))(a, b)
  want = np.einsum(spec, np.asarray(a, np.float64), np.asarray(b, np.float64))
  np.testing.assert_array_equal(got, want)


def test_cpu_layout_input_gradient_reads_the_kernel_as_stored():
  """g @ W^T (the input gradient of x @ W) takes W in the [N, K] form XLA:CPU's bf16 kernel
  reads as it is: no transposed copy of each kernel in every step (at ViT-B ~6 ms per MLP kernel
  and step, once the thunks run concurrently)."""
  x, w = jnp.ones((64, 96)), jnp.ones((96, 384))

  def loss(x, w):
    with layers.cpu_matmul_layout():
      return jnp.sum(jnp.sin(layers.einsum("ni,io->no", x, w, jnp.bfloat16)))
  hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, w).compile().as_text()
  assert re.search(r"bf16\[96,384\]", hlo)  # W cast for the matmuls, as stored
  assert not re.search(r"\[384,96\]", hlo), "W is copied transposed"


@pytest.mark.parametrize("cpu_layout", [False, True])
def test_bf16_block_backward_at_vit_b_shapes(cpu_layout):
  """The whole block in bf16 compiles and differentiates (jaxlib's batched bf16 dot bug), in
  the plain layout and in the single-CPU-device one."""
  block = layers.Block(num_heads=12, mlp_dim=3072, dtype=jnp.bfloat16)
  x = jax.random.normal(jax.random.key(0), (2, 197, 768))
  params = nn.unbox(block.init(jax.random.key(1), x))
  with layers.cpu_matmul_layout(cpu_layout):
    g = jax.jit(jax.grad(lambda p: block.apply(p, x)[0].sum()))(params)
  assert all(np.isfinite(l).all() for l in jax.tree.leaves(g))


def test_cpu_layout_gives_the_same_block_gradients():
  """The single-CPU-device layout (qkv in its natural layout, cotangent barrier) changes the
  program, not the numbers: float32 block gradients equal the plain layout's."""
  block = layers.Block(num_heads=4, mlp_dim=64)
  x = jax.random.normal(jax.random.key(0), (2, 7, 32))
  params = nn.unbox(block.init(jax.random.key(1), x))
  grads = []
  for cpu_layout in (False, True):
    with layers.cpu_matmul_layout(cpu_layout):
      grads.append(jax.jit(jax.grad(lambda p, x: (block.apply(p, x)[0] ** 2).mean(),
                                    argnums=(0, 1)))(params, x))
  chex.assert_trees_all_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("cpu_layout", [False, True])
def test_attention_equals_naive_numpy(cpu_layout):
  attn = layers.Attention(num_heads=2)
  x = jax.random.normal(jax.random.key(0), (2, 5, 8))
  params = nn.unbox(attn.init(jax.random.key(1), x))["params"]
  with layers.cpu_matmul_layout(cpu_layout):
    y, probs = jax.jit(functools.partial(attn.apply, return_probs=True))({"params": params}, x)
  xn = np.asarray(x, np.float64)
  qkv = np.einsum("bld,dthk->tblhk", xn, params["qkv_kernel"]) + \
      np.asarray(params["qkv_bias"])[:, None, None]  # [3, B, L, H, Dh]
  logits = np.einsum("bqhk,bshk->bhqs", qkv[0], qkv[1]) / np.sqrt(4)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  o = np.einsum("bhqs,bshk->bqhk", p, qkv[2])
  expected = np.einsum("bqhk,hkd->bqd", o, params["out_kernel"]) + params["out_bias"]
  np.testing.assert_allclose(probs, p, atol=1e-6)
  np.testing.assert_allclose(y, expected, atol=1e-5)


def test_patchify_order():
  img = jnp.arange(4 * 4 * 1, dtype=jnp.float32).reshape(1, 4, 4, 1)
  p = layers.patchify(img, 2)
  np.testing.assert_array_equal(p[0, 1], [2, 3, 6, 7])  # row 0, column 1


def test_layer_norm_no_affine():
  x = jax.random.normal(jax.random.key(0), (3, 7)) * 5 + 2
  y = np.asarray(layers.layer_norm(x, 1e-5))
  xn = np.asarray(x)
  ref = (xn - xn.mean(-1, keepdims=True)) / np.sqrt(xn.var(-1, keepdims=True) + 1e-5)
  np.testing.assert_allclose(y, ref, atol=1e-5)


def test_drop_path_drops_whole_examples_and_rescales_the_rest():
  x = jnp.ones((256, 5, 6))
  y = layers.drop_path(0.25).apply({}, x, False, rngs={"dropout": jax.random.key(0)})
  per_example = np.asarray(y).reshape(256, -1)
  kept = per_example[:, 0] > 0
  np.testing.assert_array_equal(per_example[kept], np.float32(1) / np.float32(0.75))  # whole example kept, rescaled
  np.testing.assert_array_equal(per_example[~kept], 0.0)      # or whole example dropped
  assert 0.15 < 1 - kept.mean() < 0.35
  np.testing.assert_array_equal(layers.drop_path(0.25).apply({}, x, True), x)


def test_fused_kernel_inits_are_xavier_over_the_flattened_fans():
  key = jax.random.key(1)
  qkv = layers.QKV_INIT(key, (64, 3, 4, 16))
  patch = layers.PATCH_INIT(key, (4, 4, 3, 64))
  for w, fan_in, fan_out in ((qkv, 64, 192), (patch, 48, 64)):
    limit = (6 / (fan_in + fan_out)) ** 0.5
    assert float(jnp.abs(w).max()) <= limit and float(jnp.abs(w).max()) > 0.95 * limit
    np.testing.assert_allclose(float(jnp.var(w)), limit ** 2 / 3, rtol=0.1)
