"""mim_jax.hlo_cost reads FLOPs and bytes per instruction from a compiled module: on CPU (one
memory space) its totals are XLA's own cost analysis; a while loop counts per trip; on a TPU
topology the bytes split by memory space; a Pallas kernel carries its cost estimate."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mim_jax import chips, hlo_cost

F32 = jnp.float32


def compile_cpu(f, *shapes):
  args = [jax.ShapeDtypeStruct(s, F32) for s in shapes]
  return jax.jit(f).lower(*args).compile()


def xla(compiled):
  return chips.step_cost(compiled.cost_analysis())


def mlp_with_softmax(x, w1, w2):
  h = jax.nn.gelu(x @ w1)
  logits = h @ w2
  return jax.nn.softmax(logits, -1).sum()


def test_cpu_totals_are_xla_cost_analysis():
  """Matmuls, elementwise ops, reductions, a padded strided convolution: the per-instruction
  sums equal XLA's module totals; CPU has one memory space, so HBM bytes are all bytes."""
  compiled = compile_cpu(jax.grad(mlp_with_softmax, argnums=(1, 2)), (64, 96), (96, 256),
                         (256, 40))
  cost = hlo_cost.analyze(compiled.as_text())
  flops, nbytes = xla(compiled)
  assert cost.flops == pytest.approx(flops, rel=1e-3)
  assert cost.total_bytes == pytest.approx(nbytes, rel=1e-3)
  assert cost.hbm_bytes == cost.total_bytes
  # x @ w1 forward and dw1 (x is not differentiated); h @ w2 forward, dw2 and dh
  m, k, n, c = 64, 96, 256, 40
  assert cost.matmul_flops == 2 * m * k * n * 2 + 2 * m * n * c * 3

  def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (2, 2), ((1, 2), (2, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  compiled = compile_cpu(conv, (2, 17, 19, 8), (4, 3, 8, 16))
  cost = hlo_cost.analyze(compiled.as_text())
  assert cost.matmul_flops == pytest.approx(xla(compiled)[0], rel=1e-6)
  # the same count by brute force over output positions: valid taps only
  x, w = np.ones((2, 17, 19, 8), np.float32), np.ones((4, 3, 8, 16), np.float32)
  taps = np.asarray(conv(x, w))[..., 0] / 8  # each output = number of valid taps x 8 channels
  assert cost.matmul_flops == 2 * 16 * 8 * taps.sum()


def test_a_scanned_loop_counts_every_trip():
  """XLA's cost analysis counts a while body once: a 6-layer scan of matmuls looks like one
  layer. Read per trip, the scanned program does the unrolled one's FLOPs."""
  depth = 6

  def layer(x, w):
    return jnp.tanh(x @ w), None

  def scanned(x, ws):
    return jax.lax.scan(layer, x, ws)[0].sum()

  def unrolled(x, ws):
    for i in range(depth):
      x = layer(x, ws[i])[0]
    return x.sum()

  costs = {}
  for name, f in (("scanned", scanned), ("unrolled", unrolled)):
    compiled = compile_cpu(jax.grad(f, argnums=1), (2048, 128), (depth, 128, 128))
    costs[name] = (hlo_cost.analyze(compiled.as_text()), xla(compiled))
  (scan, scan_xla), (flat, flat_xla) = costs["scanned"], costs["unrolled"]
  per_layer = 2 * 2048 * 128 * 128
  assert flat.matmul_flops == 3 * depth * per_layer - per_layer  # no input gradient at layer 0
  assert scan_xla[0] < 0.5 * flat_xla[0]  # what XLA's totals say of the scan
  assert scan.matmul_flops == pytest.approx(flat.matmul_flops, rel=0.2)
  assert {l.trip_count for l in scan.loops} == {depth}
  assert scan.flops == pytest.approx(flat.flops, rel=0.1)  # loop bookkeeping: 6% more
  # Bytes per trip too: not the sixth that counting the body once would give. XLA:CPU's loop
  # really moves more (it copies each layer's weights and residuals in and out of the stacked
  # buffers), so the scanned program's bytes are at least the unrolled one's.
  assert scan.hbm_bytes >= flat.hbm_bytes and scan_xla[1] < flat_xla[1]


def test_collective_bytes_follow_the_ring_algorithms():
  assert hlo_cost.ici_bytes("all-reduce", 100.0, 100.0, 4) == 150.0
  assert hlo_cost.ici_bytes("all-gather", 25.0, 100.0, 4) == 75.0
  assert hlo_cost.ici_bytes("reduce-scatter", 100.0, 25.0, 4) == 75.0
  assert hlo_cost.ici_bytes("all-reduce", 100.0, 100.0, 1) == 0.0


def test_data_parallel_step_all_reduces_its_gradients():
  """8 CPU devices, a replicated weight: the gradient's all-reduce sends 2 (n-1)/n of it."""
  mesh = jax.make_mesh((8,), ("data",))
  batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  repl = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  f = jax.jit(jax.grad(lambda w, x: jnp.tanh(x @ w).sum()), in_shardings=(repl, batch),
              out_shardings=repl)
  compiled = f.lower(jax.ShapeDtypeStruct((256, 128), F32),
                     jax.ShapeDtypeStruct((64, 256), F32)).compile()
  cost = hlo_cost.analyze(compiled.as_text(), 8)
  kinds = cost.collectives()
  assert "all-reduce" in kinds
  assert cost.ici_bytes == pytest.approx(2 * 7 / 8 * 256 * 128 * 4, rel=0.01)


def tpu_device():
  pytest.importorskip("libtpu", reason="TPU topologies need libtpu (requirements-tpu.txt)")
  from mim_jax import aot  # pylint: disable=import-outside-toplevel
  return aot.tpu_devices("v5e:1x1")[0]


def pallas_matmul(m, k, n, estimate):
  from jax.experimental import pallas as pl  # pylint: disable=import-outside-toplevel

  def kernel(a_ref, b_ref, o_ref):
    o_ref[...] = jnp.dot(a_ref[...], b_ref[...], preferred_element_type=F32)
  cost = (pl.CostEstimate(flops=2 * m * k * n, transcendentals=0,
                          bytes_accessed=(m * k + k * n) * 2 + m * n * 4) if estimate else None)
  return pl.pallas_call(kernel, out_shape=jax.ShapeDtypeStruct((m, n), F32),
                        cost_estimate=cost)


@pytest.mark.parametrize("estimate", [True, False])
def test_a_pallas_kernel_carries_its_cost_estimate(estimate):
  """A Pallas call compiled for a TPU is a custom call XLA cannot look into: with a cost
  estimate its FLOPs and bytes are the kernel's work; without one it is flagged, never a
  silent zero."""
  device = tpu_device()
  m, k, n = 256, 512, 384
  call = pallas_matmul(m, k, n, estimate)
  spec = lambda s: jax.ShapeDtypeStruct(s, jnp.bfloat16,
                                        sharding=jax.sharding.SingleDeviceSharding(device))
  compiled = jax.jit(lambda a, b: call(a, b) * 2.0).lower(spec((m, k)), spec((k, n))).compile()
  cost = hlo_cost.analyze(compiled.as_text())
  kernel = [o for o in cost.ops if o.opcode == "custom-call"]
  assert len(kernel) == 1
  if estimate:
    assert kernel[0].work.flops == 2 * m * k * n == kernel[0].work.matmul_flops
    assert kernel[0].hbm == (m * k + k * n) * 2 + m * n * 4
    assert cost.matmul_flops == 2 * m * k * n and not cost.uncosted
    assert any("tpu_custom_call" in line for line in hlo_cost.notes(cost))
  else:
    assert cost.uncosted == kernel
    assert any(line.startswith("  WARNING: 1 custom call") for line in hlo_cost.notes(cost))


def test_tpu_bytes_split_by_memory_space():
  """A matmul chain too big for VMEM on one v5e chip: HBM traffic is space 0, on-chip traffic
  (space 1) is counted apart, and both come from the one compiled module."""
  device = tpu_device()
  spec = lambda s: jax.ShapeDtypeStruct(s, jnp.bfloat16,
                                        sharding=jax.sharding.SingleDeviceSharding(device))
  f = lambda a, b, c: jax.nn.gelu((a @ b).astype(F32)).astype(jnp.bfloat16) @ c
  compiled = jax.jit(f).lower(spec((8192, 1024)), spec((1024, 4096)), spec((4096, 1024))
                              ).compile()
  cost = hlo_cost.analyze(compiled.as_text())
  assert cost.matmul_flops == 2 * 8192 * 1024 * 4096 * 2
  inputs = (8192 * 1024 + 1024 * 4096 + 4096 * 1024) * 2
  assert cost.hbm_bytes >= inputs + 8192 * 1024 * 2  # read every input, write the result
  assert cost.bytes_in(hlo_cost.VMEM) >= 0 and cost.total_bytes >= cost.hbm_bytes


def test_a_loop_stepping_by_two_counts_its_real_trips():
  """A counter from 0 by 2 while < 8: four trips, not eight (XLA:CPU writes the count as the
  loop's known_trip_count; the TPU compiler's windowed loops below carry none and are read
  from their counter)."""
  def f(x, w):
    def body(carry):
      i, y = carry
      return i + 2, jnp.tanh(y @ w)
    return jax.lax.while_loop(lambda c: c[0] < 8, body, (0, x))[1]
  compiled = compile_cpu(f, (64, 128), (128, 128))
  cost = hlo_cost.analyze(compiled.as_text())
  assert [l.trip_count for l in cost.loops] == [4]
  assert cost.matmul_flops == 4 * 2 * 64 * 128 * 128


def test_fsdp_matmul_split_into_a_windowed_loop_counts_in_full():
  """The fsdp FLOP puzzle (docs/tpu_cost.md): on a 16-chip fsdp axis the TPU compiler turns an
  all-gathered matmul of a real step's size into a loop of 4 trips (a windowed, collective
  matmul, its counter stepping by 2); XLA's cost analysis counts that body once, a quarter of
  the work. Read per trip, the matmul counts in full."""
  pytest.importorskip("libtpu", reason="TPU topologies need libtpu (requirements-tpu.txt)")
  from mim_jax import aot, sharding  # pylint: disable=import-outside-toplevel
  mesh = sharding.make_mesh({"data": 1, "fsdp": 16}, devices=aot.tpu_devices("v5e:4x4"))
  rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp"), None))
  cols = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "fsdp"))
  b, d, m = 16 * 16 * 59, 768, 3072  # 16 images of 59 visible tokens per chip, ViT-B's fc1

  def fc1(x, w):
    return jnp.einsum("nd,dm->nm", x.astype(jnp.bfloat16), w.astype(jnp.bfloat16),
                      preferred_element_type=F32)
  compiled = jax.jit(fc1, out_shardings=rows).lower(
      jax.ShapeDtypeStruct((b, d), F32, sharding=rows),
      jax.ShapeDtypeStruct((d, m), F32, sharding=cols)).compile()
  cost = hlo_cost.analyze(compiled.as_text(), 16)
  assert "windowed_dot_general" in compiled.as_text()
  assert [l.trip_count for l in cost.loops] == [4]
  assert cost.matmul_flops == 2 * b * d * m / 16  # every chip's share of the matmul
  assert xla(compiled)[0] < 0.3 * cost.matmul_flops  # what XLA's total says
