"""The single-CPU-device layout (`models/cpu_layout.py`, chosen by `platforms.select` from
`config.cpu_matmul_layout`): its products are the einsums, it changes the program and not the
numbers, the switch picks it only for one CPU device, and what it changes in the compiled step,
read from its HLO."""
import functools
import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import maskalign_b16_clip_b16
from mim_jax import aot, sharding, step as step_lib
from mim_jax.models import cpu_layout, layers, platforms

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
  got = jax.jit(functools.partial(cpu_layout.canonical_einsum, spec))(a, b)
  want = np.einsum(spec, np.asarray(a, np.float64), np.asarray(b, np.float64))
  np.testing.assert_array_equal(got, want)


def test_cpu_layout_input_gradient_reads_the_kernel_as_stored():
  """g @ W^T (the input gradient of x @ W) takes W in the [N, K] form XLA:CPU's bf16 kernel
  reads as it is: no transposed copy of each kernel in every step (at ViT-B ~6 ms per MLP kernel
  and step, once the thunks run concurrently)."""
  x, w = jnp.ones((64, 96)), jnp.ones((96, 384))

  def loss(x, w):
    with layers.use_platform_ops(cpu_layout.OPS):
      return jnp.sum(jnp.sin(layers.einsum("ni,io->no", x, w, jnp.bfloat16)))
  hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, w).compile().as_text()
  assert re.search(r"bf16\[96,384\]", hlo)  # W cast for the matmuls, as stored
  assert not re.search(r"\[384,96\]", hlo), "W is copied transposed"


def test_cpu_layout_gives_the_same_block_gradients():
  """The single-CPU-device layout (qkv in its natural layout, cotangent barrier) changes the
  program, not the numbers: float32 block gradients equal the plain layout's."""
  block = layers.Block(num_heads=4, mlp_dim=64)
  x = jax.random.normal(jax.random.key(0), (2, 7, 32))
  params = nn.unbox(block.init(jax.random.key(1), x))
  grads = []
  for ops in (layers.PORTABLE, cpu_layout.OPS):
    with layers.use_platform_ops(ops):
      grads.append(jax.jit(jax.grad(lambda p, x: (block.apply(p, x)[0] ** 2).mean(),
                                    argnums=(0, 1)))(params, x))
  chex.assert_trees_all_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)


def _config(cpu_matmul_layout: bool) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"cpu_matmul_layout": cpu_matmul_layout})


@pytest.mark.parametrize("devices,layout,want", [
    (1, True, "cpu_layout"),   # one CPU device, switch on (the default)
    (1, False, "portable"),    # switch off
    (8, True, "portable"),     # a mesh: the layout's flattening copies would lose its shardings
])
def test_the_switch_picks_the_cpu_layout_for_one_cpu_device_only(devices, layout, want):
  """`Setup.platform_ops`, what the train step enters, follows `platforms.select`: the CPU
  layout only for a single CPU device while `config.cpu_matmul_layout`."""
  mesh = sharding.make_mesh({"data": devices}, devices=jax.devices("cpu")[:devices])
  setup = step_lib.Setup(config=_config(layout), model=None, objective=None, tx=None,
                         schedule=None, mesh=mesh)
  assert setup.platform_ops.name == want


def test_the_cpu_layout_is_the_default_on_one_cpu_device_and_never_elsewhere():
  assert platforms.select("cpu", 1, ml_collections.ConfigDict()) is cpu_layout.OPS
  for platform in ("tpu", "gpu"):
    assert platforms.select(platform, 1, _config(True)) is layers.PORTABLE


def _block_program(ops=None) -> str:
  """The lowered program of a bf16 block's gradient under `ops` (None: no context entered)."""
  block = layers.Block(num_heads=2, mlp_dim=32, dtype=jnp.bfloat16)
  x = jnp.ones((2, 5, 16))
  params = nn.unbox(block.init(jax.random.key(1), x))

  def grad(p, x):
    if ops is None:
      return jax.grad(lambda p: block.apply(p, x)[0].sum())(p)
    with layers.use_platform_ops(ops):
      return jax.grad(lambda p: block.apply(p, x)[0].sum())(p)
  return jax.jit(grad).lower(params, x).as_text()


def test_switch_off_gives_the_plain_einsum_program():
  """With `cpu_matmul_layout=False` a single-CPU-device step traces exactly the program of no
  platform code at all (plain einsums; two optimization barriers, before the backward pass
  recomputes the MLP's activation and the attention's probabilities); with it on, the layout's
  barriers are there too."""
  plain = _block_program()
  assert plain.count("optimization_barrier") == 2
  assert _block_program(platforms.select("cpu", 1, _config(False))) == plain
  layout = _block_program(platforms.select("cpu", 1, _config(True)))
  assert layout.count("optimization_barrier") > 2


def widest_activation_fusion(hlo: str, batch: int) -> int:
  """The most operands of a fusion whose result has the batch as its leading axis."""
  widest = 0
  for line in hlo.splitlines():
    m = re.search(r"= \w+\[(\d+),[\d,]*\]\S* fusion\((.*?)\), kind", line)
    if m and int(m.group(1)) == batch:
      widest = max(widest, len(re.findall(r"%[\w.\-]+", m.group(2))))
  return widest


def qkv_kernel_copies(hlo: str) -> int:
  """Loop fusions that read nothing but a qkv kernel parameter: copies of the kernel (the
  parameter's name carries its path, `..._qkv_kernel_...`)."""
  params = set(re.findall(r"%([\w.\-]*qkv_kernel[\w.\-]*) = \S+ parameter\(", hlo))
  return sum(1 for m in re.finditer(r"fusion\(%([\w.\-]+)\), kind=kLoop", hlo)
             if m.group(1) in params)


@pytest.mark.slow
def test_cpu_layout_of_the_compiled_step(tmp_path):
  """Ti/16 MaskAlign step (12 blocks), one CPU device, with and without the switch:
  - the residual stream's cotangent: without the barrier XLA's CPU fusion rebuilds it, a chain
    through every later block, inside each of its consumers, so the widest fusion grows with
    depth (~18 operands a block); with it, one block's worth;
  - no qkv kernel is copied (transposed) in every step: here XLA copies the teacher's without
    the switch (at ViT-B size the student's too: 13 ms a step each in float32)."""
  import torch
  import transformers
  torch.manual_seed(0)
  transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
      hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
      image_size=224, patch_size=16)).save_pretrained(str(tmp_path))

  def hlo(layout: bool) -> str:
    c = maskalign_b16_clip_b16.get_config("variant=Ti/16")  # depth 12, 59 visible tokens
    c.teacher.spec = str(tmp_path)
    c.objective.top_k = 1  # the teacher has one layer
    c.batch_size = 4  # no width of these models is 4
    c.cpu_matmul_layout = layout
    return aot.compile_step(c, aot.cpu_devices(1)).compiled.as_text()

  on, off = hlo(True), hlo(False)
  assert widest_activation_fusion(on, 4) <= 30, widest_activation_fusion(on, 4)
  assert widest_activation_fusion(off, 4) > 4 * widest_activation_fusion(on, 4)
  assert qkv_kernel_copies(on) == 0
  assert qkv_kernel_copies(off) >= 1
