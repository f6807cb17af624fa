"""Shared layers: mixed-precision einsum (forward and custom backward), attention maths, and the
platform seam (`PlatformOps`) through which Block and Attention reach platform-specific code."""
import ast
import collections
import contextlib
import functools
import inspect
import io

import chex
import flax.linen as nn
import jax
import jax.ad_checkpoint
import jax.numpy as jnp
import numpy as np
import pytest

from mim_jax.models import cpu_layout, layers

# Every PlatformOps record: each must compute what the portable layers compute.
PLATFORM_OPS = (layers.PORTABLE, cpu_layout.OPS)


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


@pytest.mark.parametrize("ops", PLATFORM_OPS, ids=lambda ops: ops.name)
def test_bf16_block_backward_at_vit_b_shapes(ops):
  """The whole block in bf16 compiles and differentiates (jaxlib's batched bf16 dot bug), with
  the portable ops and with the single-CPU-device layout."""
  block = layers.Block(num_heads=12, mlp_dim=3072, dtype=jnp.bfloat16)
  x = jax.random.normal(jax.random.key(0), (2, 197, 768))
  params = nn.unbox(block.init(jax.random.key(1), x))
  with layers.use_platform_ops(ops):
    g = jax.jit(jax.grad(lambda p: block.apply(p, x)[0].sum()))(params)
  assert all(np.isfinite(l).all() for l in jax.tree.leaves(g))


@pytest.mark.parametrize("ops", PLATFORM_OPS, ids=lambda ops: ops.name)
def test_attention_equals_naive_numpy(ops):
  attn = layers.Attention(num_heads=2)
  x = jax.random.normal(jax.random.key(0), (2, 5, 8))
  params = nn.unbox(attn.init(jax.random.key(1), x))["params"]
  with layers.use_platform_ops(ops):
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


# Words that name a platform or ask which one runs: none belongs in the portable layers.
_PLATFORM_WORDS = ("cpu", "gpu", "tpu", "cuda", "cudnn", "rocm", "pallas", "mosaic", "triton")
_PLATFORM_QUERIES = {"platform", "default_backend", "devices", "local_devices", "backend"}


def test_layers_module_names_no_platform():
  """models/layers.py (Block, Attention, einsum, ...) holds no platform's code: no identifier of
  its code names a platform or queries which one runs, and it imports no module of a platform
  (cpu_layout) nor the choice among them (platforms). Platform code is reached through the
  active `PlatformOps` only. (Docstrings and comments may say why the portable form is as it
  is.)"""
  tree = ast.parse(inspect.getsource(layers))
  names, modules = set(), set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Name):
      names.add(node.id)
    elif isinstance(node, ast.Attribute):
      names.add(node.attr)
    elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
      names.add(node.name)
    elif isinstance(node, ast.arg):
      names.add(node.arg)
    elif isinstance(node, ast.keyword) and node.arg:
      names.add(node.arg)
    elif isinstance(node, ast.Import):
      modules.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      modules.update(f"{node.module}.{alias.name}" for alias in node.names)
  assert {"Block", "Attention", "einsum"} <= names  # the walk sees the code
  named = {n for n in names if any(w in n.lower() for w in _PLATFORM_WORDS)}
  assert not named, f"platform-specific names in layers.py: {sorted(named)}"
  assert not names & _PLATFORM_QUERIES, sorted(names & _PLATFORM_QUERIES)
  assert not {m for m in modules if m.startswith("mim_jax.models.")}, sorted(modules)


def _recording(ops: layers.PlatformOps, calls: collections.Counter) -> layers.PlatformOps:
  """`ops` with each entry counting its calls in `calls`."""
  def record(name):
    entry = getattr(ops, name)

    def run(*args):
      calls[name] += 1
      return entry(*args)
    return run
  return layers.PlatformOps(name="recording", dot=record("dot"),
                            qkv_projection=record("qkv_projection"),
                            block_input=record("block_input"), attention=record("attention"))


def test_block_and_attention_run_the_active_platform_ops():
  """Block and Attention reach platform code only through the active `PlatformOps`: under a
  record whose entries count their calls, a bf16 block calls block_input once, the qkv
  projection once, the attention once (with the block's return_probs) and the record's dot for
  each of its six matmuls (qkv, logits, attention output, out-projection, fc1, fc2); its values
  are the portable block's."""
  block = layers.Block(num_heads=2, mlp_dim=32, dtype=jnp.bfloat16)
  x = jax.random.normal(jax.random.key(0), (2, 5, 16))
  params = nn.unbox(block.init(jax.random.key(1), x))
  calls = collections.Counter()
  with layers.use_platform_ops(_recording(layers.PORTABLE, calls)):
    y, probs = block.apply(params, x, None, True, True)
  assert calls == {"block_input": 1, "qkv_projection": 1, "attention": 1, "dot": 8}, calls
  assert probs.shape == (2, 2, 5, 5)
  y_portable, probs_portable = block.apply(params, x, None, True, True)
  np.testing.assert_array_equal(y, y_portable)
  np.testing.assert_array_equal(probs, probs_portable)
  assert layers.platform_ops() is layers.PORTABLE  # the context is left as it was found


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


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=lambda d: jnp.dtype(d).name)
def test_einsum_of_an_activation_is_the_einsum_of_its_output(dtype):
  """`einsum(..., a_fn=act)` (the activation recomputed in the backward pass below float32)
  gives the values and gradients of applying the activation first."""
  a = jax.random.normal(jax.random.key(0), (3, 4, 6))
  b = jax.random.normal(jax.random.key(1), (6, 5))
  gelu = layers.activation("gelu")
  fused = lambda a, b: jnp.sum(jnp.sin(layers.einsum("abi,io->abo", a, b, dtype, a_fn=gelu)))
  first = lambda a, b: jnp.sum(jnp.sin(layers.einsum("abi,io->abo", gelu(a), b, dtype)))
  got, want = (jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(a, b) for f in (fused, first))
  chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-6)


def _residual_shapes(fn, *args) -> list[str]:
  """The shapes autodiff keeps from `fn`'s forward pass for its backward pass."""
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    jax.ad_checkpoint.print_saved_residuals(fn, *args)
  return [line.split()[0] for line in out.getvalue().splitlines() if line.strip()]


def test_bf16_mlp_keeps_one_hidden_array_for_the_backward_pass():
  """A bf16 MLP keeps only its hidden pre-activation [B, L, mlp] for the backward pass, not
  the GELU's output (nor its erfc term): on TPU each is an extra HBM write and read of the
  largest activation of a block."""
  mlp = layers.Mlp(64, dtype=jnp.bfloat16, stream_dtype=jnp.bfloat16)
  x = jnp.ones((2, 5, 16), jnp.bfloat16)
  params = nn.unbox(mlp.init(jax.random.key(0), x))
  shapes = _residual_shapes(lambda p, x: mlp.apply(p, x).astype(jnp.float32).sum(), params, x)
  hidden = [s for s in shapes if np.prod([int(d) for d in s[s.index("[") + 1:-1].split(",")
                                           if d]) == 2 * 5 * 64]
  assert hidden == ["bf16[2,5,64]"], shapes


def _attention_inputs(dtype=jnp.float32):
  q, k, v = (jax.random.normal(jax.random.key(i), (2, 3, 7, 8), dtype) for i in range(3))
  return q, k, v


def test_bf16_attention_recomputes_its_probabilities():
  """Below float32 (no bias, dropout or returned probabilities) the attention keeps no
  [B, H, L, L] array for its backward pass (on TPU each is written to HBM and read back), and
  its values and gradients are those of the explicit attention that keeps them (the bias path,
  with a zero bias) within bf16 rounding, and of float32 within bf16's precision."""
  q, k, v = _attention_inputs(jnp.bfloat16)
  recomputed = lambda q, k, v: layers.softmax_attention(q, k, v, None, jnp.bfloat16)[0]
  kept = lambda q, k, v: layers.softmax_attention(q, k, v, jnp.zeros((7, 7)), jnp.bfloat16)[0]
  f32 = lambda q, k, v: layers.softmax_attention(q, k, v, None, jnp.float32)[0]
  loss = lambda f: lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v).astype(jnp.float32)))
  shapes = _residual_shapes(loss(recomputed), q, k, v)
  assert not [s for s in shapes if s.endswith("[2,3,7,7]")], shapes
  assert [s for s in _residual_shapes(loss(kept), q, k, v) if s.endswith("[2,3,7,7]")]
  got, want = (jax.jit(jax.value_and_grad(loss(f), argnums=(0, 1, 2)))(q, k, v)
               for f in (recomputed, kept))
  np.testing.assert_allclose(got[0], want[0], rtol=1e-2)
  for a, b in zip(got[1], want[1]):
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                               rtol=0.05, atol=0.05)
  q32, k32, v32 = (x.astype(jnp.float32) for x in (q, k, v))
  ref = jax.jit(jax.value_and_grad(loss(f32), argnums=(0, 1, 2)))(q32, k32, v32)
  np.testing.assert_allclose(got[0], ref[0], rtol=2e-2)
  for a, b in zip(got[1], ref[1]):
    np.testing.assert_allclose(np.asarray(a, np.float32), b, rtol=0.1, atol=0.1)
