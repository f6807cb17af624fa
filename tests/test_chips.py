"""The roofline estimate's arithmetic on a made-up cost, and the chip table's sanity."""
import pytest

from mim_jax import aot, chips


def test_roofline_is_the_max_of_compute_memory_and_collective_time():
  v5e = chips.CHIPS["v5e"]
  # 394 TFLOP at 197 TFLOP/s = 2 s; 819 GB at 819 GB/s = 1 s: compute-bound, MFU bound 100%.
  r = chips.roofline(chips.StepCost(flops=394e12, hbm_bytes=819e9), v5e)
  assert (r.compute_s, r.memory_s) == pytest.approx((2.0, 1.0))
  assert r.bound == "compute" and r.step_s == pytest.approx(2.0) and r.mfu_bound == 1.0
  # 4x the bytes: memory-bound, 4 s, of which the FLOPs need 2 s: at most 50% of peak.
  r = chips.roofline(chips.StepCost(flops=394e12, hbm_bytes=4 * 819e9), v5e)
  assert r.bound == "memory" and r.step_s == pytest.approx(4.0)
  assert r.mfu_bound == pytest.approx(0.5)
  # 1 TB sent over 200 GB/s of links: 5 s, collective-bound.
  r = chips.roofline(chips.StepCost(flops=394e12, hbm_bytes=819e9, ici_bytes=1e12), v5e)
  assert r.bound == "collectives" and r.collective_s == pytest.approx(5.0)
  assert r.step_s == pytest.approx(5.0) and r.mfu_bound == pytest.approx(0.4)


def test_mfu_bound_counts_model_flops_not_recomputation():
  """Remat recomputes: 1.5x the model's FLOPs compiled. The time is the compiled work's, the
  bound the model's share of peak over that time."""
  v5e = chips.CHIPS["v5e"]
  r = chips.roofline(chips.StepCost(flops=3 * 197e12, hbm_bytes=0, model_flops=2 * 197e12),
                     v5e)
  assert r.step_s == pytest.approx(3.0) and r.mfu_bound == pytest.approx(2 / 3)


def test_table_marks_the_target_and_prints_both_byte_counts():
  cost = chips.StepCost(flops=197e12 * 0.01, hbm_bytes=819e9 * 0.04, model_flops=197e12 * 0.008,
                        total_bytes=60e9, xla_flops=2.0e12, xla_bytes=64e9, ici_bytes=1e9)
  text = chips.roofline_table(cost, target="v5e")
  assert "1.970 TFLOP of matmuls as compiled" in text and "model 1.576 TFLOP" in text
  assert "HBM 32.76 GB read + written (60 FLOP/byte)" in text
  assert "XLA's bytes accessed 64.00 GB (31 FLOP/byte)" in text and "ESTIMATE" in text
  row = next(line for line in text.splitlines() if line.strip().startswith("v5e*")).split()
  # compute 10 ms, memory 40 ms, collectives 1 GB / 200 GB/s = 5 ms, step 40 ms,
  # MFU bound 8 ms of model FLOPs / 40 ms = 20%
  assert row[1:] == ["197", "819", "200", "10.00", "40.00", "5.00", "40.00", "20%"]
  v4 = next(line for line in text.splitlines() if line.strip().startswith("v4")).split()
  assert v4[3] == "-" and v4[6] == "-"  # no published ICI figure: collectives not timed
  assert chips.step_cost({}) == (0.0, 0.0)
  assert chips.step_cost([{"flops": 3.0, "bytes accessed": 4.0}]) == (3.0, 4.0)


def test_every_chip_has_a_source_and_aot_reads_hbm_from_the_table():
  assert all(c.source.startswith("https://") for c in chips.CHIPS.values())
  assert {"v4", "v5e", "v5p", "v6e", "H100", "H200"} <= set(chips.CHIPS)
  assert aot.HBM_GIB == {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}
  # half of each page's bidirectional per-chip interconnect figure
  assert {g: chips.CHIPS[g].ici_bytes_per_s for g in ("v5e", "v5p", "v6e")} == {
      "v5e": 200e9, "v5p": 600e9, "v6e": 400e9}


def test_gpu_device_kinds_find_their_chip_and_other_boards_none():
  assert chips.chip_for_device_kind("NVIDIA H100 80GB HBM3") is chips.CHIPS["H100"]
  assert chips.chip_for_device_kind("NVIDIA H200") is chips.CHIPS["H200"]
  for other in ("NVIDIA H100 PCIe", "NVIDIA H100 NVL", "NVIDIA H200 NVL",
                "NVIDIA A100-SXM4-80GB", "cpu", "TPU v5 lite"):
    assert chips.chip_for_device_kind(other) is None, other
