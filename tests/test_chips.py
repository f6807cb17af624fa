"""The roofline estimate's arithmetic on a made-up cost, and the chip table's sanity."""
import pytest

from mim_jax import aot, chips


def test_roofline_is_the_max_of_compute_and_memory_time():
  v5e = chips.CHIPS["v5e"]
  # 394 TFLOP at 197 TFLOP/s = 2 s; 819 GB at 819 GB/s = 1 s: compute-bound, MFU bound 100%.
  r = chips.roofline(394e12, 819e9, v5e)
  assert (r.compute_s, r.memory_s) == pytest.approx((2.0, 1.0))
  assert r.bound == "compute" and r.step_s == pytest.approx(2.0) and r.mfu_bound == 1.0
  # 4x the bytes: memory-bound, 4 s, of which the FLOPs need 2 s: at most 50% of peak.
  r = chips.roofline(394e12, 4 * 819e9, v5e)
  assert r.bound == "memory" and r.step_s == pytest.approx(4.0)
  assert r.mfu_bound == pytest.approx(0.5)


def test_table_reads_a_cost_dict_or_list_and_marks_the_target():
  cost = [{"flops": 197e12 * 0.01, "bytes accessed": 819e9 * 0.04, "other": 1.0}]
  text = chips.roofline_table(cost, target="v5e")
  assert "1.970 TFLOP, 32.76 GB accessed (60 FLOP/byte)" in text
  assert "ESTIMATE" in text
  row = next(line for line in text.splitlines() if line.strip().startswith("v5e*")).split()
  # compute 10 ms, memory 40 ms, step 40 ms, MFU bound 25%
  assert row[3:] == ["10.00", "40.00", "40.00", "25%"]
  assert chips.step_cost({}) == (0.0, 0.0)


def test_every_chip_has_a_source_and_aot_reads_hbm_from_the_table():
  assert all(c.source.startswith("https://") for c in chips.CHIPS.values())
  assert {"v4", "v5e", "v5p", "v6e", "H100", "H200"} <= set(chips.CHIPS)
  assert aot.HBM_GIB == {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}


def test_gpu_device_kinds_find_their_chip_and_other_boards_none():
  assert chips.chip_for_device_kind("NVIDIA H100 80GB HBM3") is chips.CHIPS["H100"]
  assert chips.chip_for_device_kind("NVIDIA H200") is chips.CHIPS["H200"]
  for other in ("NVIDIA H100 PCIe", "NVIDIA H100 NVL", "NVIDIA H200 NVL",
                "NVIDIA A100-SXM4-80GB", "cpu", "TPU v5 lite"):
    assert chips.chip_for_device_kind(other) is None, other
