"""The one attention switch (`config.attention`, `platforms.select`), the fused attention of
`models/fused_attention.py` against the plain softmax attention, and `precision="auto"`
resolved for the target platform (`platforms.resolve_precision`, `platforms.for_target`).

cuDNN needs a GPU; on CPU the same wrapper runs XLA's implementation of
`jax.nn.dot_product_attention`, which checks everything the wrapper does (layout, scale, bias,
dtypes, gradients) against `layers.softmax_attention`.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mim_jax import aot, defaults
from mim_jax.models import cpu_layout, fused_attention, layers, platforms
from mim_jax.objectives import common

BF16 = jnp.bfloat16


def _qkv(b=2, h=3, l=50, dh=64, seed=0):
  keys = jax.random.split(jax.random.key(seed), 4)
  q, k, v = (jax.random.normal(kk, (b, h, l, dh), jnp.float32) for kk in keys[:3])
  bias = 0.5 * jax.random.normal(keys[3], (h, l, l), jnp.float32)  # relative position bias
  return q, k, v, bias


def _loss(attention, dtype, q, k, v, bias):
  """A scalar that weights every output element differently (a plain sum would hide a
  permutation of the outputs)."""
  out, _ = attention(q, k, v, bias, dtype)
  w = jnp.sin(jnp.arange(out.size, dtype=jnp.float32)).reshape(out.shape)
  return (out.astype(jnp.float32) * w).sum()


XLA_FUSED = functools.partial(fused_attention.dot_product_attention, implementation="xla")


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("l", [50, 197])
def test_fused_xla_equals_plain_attention_in_float32(with_bias, l):
  q, k, v, bias = _qkv(l=l)
  bias = bias if with_bias else None
  got, probs = XLA_FUSED(q, k, v, bias, jnp.float32)
  want, _ = layers.softmax_attention(q, k, v, bias, jnp.float32)
  assert probs is None and got.shape == want.shape == q.shape and got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  g_got = jax.grad(functools.partial(_loss, XLA_FUSED, jnp.float32), argnums=(0, 1, 2))(
      q, k, v, bias)
  g_want = jax.grad(functools.partial(_loss, layers.softmax_attention, jnp.float32),
                    argnums=(0, 1, 2))(q, k, v, bias)
  for a, b in zip(g_got, g_want):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_fused_xla_equals_plain_attention_in_bf16():
  """bf16 matmul operands on both sides (float32 accumulation): within bf16's rounding."""
  q, k, v, bias = _qkv(l=197)
  got, _ = XLA_FUSED(q, k, v, bias, BF16)
  want, _ = layers.softmax_attention(q, k, v, bias, BF16)
  ref, _ = layers.softmax_attention(q, k, v, bias, jnp.float32)
  scale = np.abs(np.asarray(ref)).max()
  assert np.abs(np.asarray(got) - np.asarray(want)).max() < 2e-2 * scale
  g_got = jax.grad(functools.partial(_loss, XLA_FUSED, BF16), argnums=(0, 1, 2))(q, k, v, bias)
  g_want = jax.grad(functools.partial(_loss, layers.softmax_attention, BF16),
                    argnums=(0, 1, 2))(q, k, v, bias)
  for a, b in zip(g_got, g_want):
    a, b = np.asarray(a), np.asarray(b)
    assert np.abs(a - b).max() < 3e-2 * np.abs(b).max()


def test_bf16_stream_keeps_the_output_dtype():
  """q, k, v in bf16 (a bf16 teacher's stream): the output comes back in bf16 on both paths."""
  q, k, v, _ = _qkv()
  q, k, v = (x.astype(BF16) for x in (q, k, v))
  for attention in (XLA_FUSED, layers.softmax_attention):
    out, _ = attention(q, k, v, None, BF16)
    assert out.dtype == BF16


def test_calls_the_kernel_does_not_take_run_the_plain_attention():
  """return_probs (the teacher's attention-map layer), dropout, or float32 for cuDNN: the
  plain attention's result, probabilities included."""
  q, k, v, _ = _qkv()
  want_out, want_probs = layers.softmax_attention(q, k, v, None, BF16, return_probs=True)
  out, probs = fused_attention.CUDNN.attention(q, k, v, None, BF16, None, True)
  np.testing.assert_array_equal(out, want_out)
  np.testing.assert_array_equal(probs, want_probs)
  drop = lambda p: p * 0.5
  out, _ = fused_attention.CUDNN.attention(q, k, v, None, BF16, drop, False)
  np.testing.assert_array_equal(out, layers.softmax_attention(q, k, v, None, BF16, drop)[0])
  out, _ = fused_attention.CUDNN.attention(q, k, v, None, jnp.float32)  # cuDNN takes no f32
  np.testing.assert_array_equal(out, layers.softmax_attention(q, k, v, None, jnp.float32)[0])


def test_cudnn_applies_to_bf16_and_its_head_dims():
  assert fused_attention.applies(BF16, 64, "cudnn") and fused_attention.applies(BF16, 80, "cudnn")
  assert not fused_attention.applies(jnp.float32, 64, "cudnn")
  assert not fused_attention.applies(BF16, 160, "cudnn")
  assert not fused_attention.applies(BF16, 60, "cudnn")
  assert fused_attention.applies(jnp.float32, 60, "xla")


# ---- the switch -------------------------------------------------------------------------------
def _config(**kw) -> ml_collections.ConfigDict:
  c = defaults.base("maskalign")
  c.update(kw)
  return c


def test_select_picks_one_record_per_platform():
  assert platforms.select("gpu", 8, _config()) is fused_attention.CUDNN  # auto -> bf16 -> cuDNN
  assert platforms.select("gpu", 1, _config(attention="cudnn")) is fused_attention.CUDNN
  assert platforms.select("gpu", 8, _config(attention="xla")) is layers.PORTABLE
  assert platforms.select("gpu", 8, _config(precision="float32")) is layers.PORTABLE
  assert platforms.select("tpu", 4, _config()) is layers.PORTABLE
  assert platforms.select("cpu", 1, _config()) is cpu_layout.OPS
  assert platforms.select("cpu", 8, _config()) is layers.PORTABLE


@pytest.mark.parametrize("platform,kw,needle", [
    ("tpu", dict(attention="cudnn"), "needs a GPU; this step runs on tpu"),
    ("cpu", dict(attention="cudnn"), "needs a GPU; this step runs on cpu"),
    ("gpu", dict(attention="cudnn", precision="float32"), "needs bf16 matmuls"),
])
def test_an_attention_the_platform_cannot_honour_is_refused(platform, kw, needle):
  for call in (lambda c: platforms.for_target(c, platform),
               lambda c: platforms.select(platform, 1, c)):
    with pytest.raises(ValueError, match=needle) as e:
      call(_config(**kw))
    assert "\n" not in str(e.value) and "--config.attention" in str(e.value) or (
        "--config.precision" in str(e.value))


# ---- precision="auto" ---------------------------------------------------------------------------
def test_auto_precision_is_bf16_on_tpu_and_gpu_and_float32_on_cpu():
  assert defaults.base("mae").precision == "auto"
  assert [platforms.resolve_precision("auto", p) for p in ("tpu", "gpu", "cuda", "cpu")] == [
      "bfloat16", "bfloat16", "bfloat16", "float32"]
  # An explicit dtype is kept on every platform (a saved config.json's "float32" too).
  assert platforms.resolve_precision("float32", "tpu") == "float32"
  assert platforms.resolve_precision("bfloat16", "cpu") == "bfloat16"
  resolved = platforms.for_target(_config(), "tpu")
  assert resolved.precision == "bfloat16" and common.teacher_dtype(resolved) == "bfloat16"
  assert common.compute_dtype(resolved) == jnp.dtype(BF16)
  assert platforms.for_target(_config(), "cpu").precision == "float32"
  # Unresolved, a config runs where it is: these tests run on CPU.
  assert common.compute_dtype(_config()) == jnp.dtype(jnp.float32)
  assert common.teacher_dtype(_config(precision="auto")) == "float32"


@pytest.mark.usefixtures("libtpu")
def test_aot_compiles_auto_as_bf16_for_a_tpu_topology(tiny_vit_teacher_dir):
  """What `python -m mim_jax.aot --topology v5e:2x2` builds from a config left at "auto":
  the student's matmuls and the teacher in bf16; for CPU devices in float32."""
  from configs import maskalign_b16_clip_b16  # pylint: disable=import-outside-toplevel
  config = maskalign_b16_clip_b16.get_config("runlocal=True")
  config.teacher.spec = tiny_vit_teacher_dir
  assert config.precision == "auto"
  for devices, dtype in ((aot.tpu_devices("v5e:2x2"), "bfloat16"), (jax.devices()[:1], "float32")):
    _, setup, _, t_params = aot.lower_step(config, devices)
    assert setup.config.precision == dtype and setup.teacher.dtype == dtype
    assert setup.model_student().dtype == jnp.dtype(dtype)
    assert {x.dtype for x in jax.tree.leaves(t_params)} == {jnp.dtype(dtype)}
    assert f"precision {dtype}" in aot.describe(config, devices)
