"""The compiled train step's cost (`aot.step_cost`): every figure comes from the one compiled
module, and a scanned student costs what the unscanned one does (its loop read per trip, not
scaled by a FLOP ratio)."""
import pytest

from configs import maskalign_b16_clip_b16
from mim_jax import aot, chips, hlo_cost, model_flops


def tiny_config(teacher_dir, scan=False, **mesh):
  c = maskalign_b16_clip_b16.get_config("runlocal=True")
  c.teacher.spec = teacher_dir
  c.student.variant = "micro/4"  # 4 blocks
  c.student.scan = scan
  c.mesh.update(mesh)
  return c


def costs(teacher_dir, devices):
  out = {}
  for scan in (False, True):
    result = aot.compile_step(tiny_config(teacher_dir, scan), devices)
    cost, module = aot.step_cost(result)
    out[scan] = result, cost, module
  return out


def check_scanned_equals_unscanned(out):
  (_, flat, flat_module), (scanned_result, scan, scan_module) = out[False], out[True]
  # XLA's own total counts the scanned blocks once: the bug a FLOP-ratio scaling papered over
  assert scan.xla_flops < 0.9 * flat.xla_flops
  assert scan.flops == pytest.approx(flat.flops, rel=1e-6)  # the matmuls, loop per trip
  # every FLOP, elementwise too (the loop adds its own index arithmetic)
  assert scan.flops + scan.other_flops == pytest.approx(flat.flops + flat.other_flops, rel=0.05)
  assert scan.model_flops == flat.model_flops == pytest.approx(model_flops.count(
      scanned_result.setup.config, scanned_result.setup.teacher).total / 4)
  assert {l.trip_count for l in scan_module.loops if l.trip_count} >= {4}
  return flat, scan


def test_scanned_step_costs_the_unscanned_flops_on_cpu(tiny_vit_teacher_dir):
  flat, scan = check_scanned_equals_unscanned(costs(tiny_vit_teacher_dir, aot.cpu_devices(4)))
  # XLA:CPU's loop copies each layer's weights and residuals in and out of the stacked
  # buffers (real traffic, ~20% here): the bytes are per trip, never the fraction a body
  # counted once would give.
  assert flat.hbm_bytes <= scan.hbm_bytes <= 1.3 * flat.hbm_bytes


@pytest.mark.slow
def test_tpu_step_figures_come_from_one_module_and_scan_costs_the_same(tiny_vit_teacher_dir):
  """v5e:2x2: the roofline's HBM bytes and the every-space total are read from the compiled
  module whose own cost analysis is printed beside them; HBM is part of the total (the rest is
  on-chip VMEM); the scanned step's FLOPs and HBM bytes are the unscanned step's."""
  pytest.importorskip("libtpu", reason="TPU topologies need libtpu (requirements-tpu.txt)")
  devices = aot.tpu_devices("v5e:2x2")
  out = costs(tiny_vit_teacher_dir, devices)
  for result, cost, module in out.values():
    assert (cost.xla_flops, cost.xla_bytes) == chips.step_cost(result.compiled.cost_analysis())
    again = hlo_cost.analyze(result.compiled.as_text(), 4)
    assert (cost.hbm_bytes, cost.total_bytes) == (again.hbm_bytes, again.total_bytes)
    assert 0 < cost.hbm_bytes < cost.total_bytes
    assert module.bytes_in(hlo_cost.VMEM) > 0
    assert any(o.opcode == "copy-start" and o.hbm for o in module.ops)  # prefetches counted
    text, _ = aot.report(result, devices, 16.0, breakdown=5)
    assert f"HBM {cost.hbm_bytes / 1e9:.2f} GB read + written" in text
    assert f"XLA's bytes accessed {cost.xla_bytes / 1e9:.2f} GB" in text
    assert "top 5 by HBM bytes" in text and "teacher forward" in text
  flat, scan = check_scanned_equals_unscanned(out)
  assert scan.hbm_bytes == pytest.approx(flat.hbm_bytes, rel=0.05)
