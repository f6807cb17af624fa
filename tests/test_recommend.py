"""--recommend: candidate settings compiled fastest-first within a compile budget, ranked by
predicted images per second per chip among those that fit (a made-up compile function), and
once through the command line on CPU devices."""
import os
import subprocess
import sys
import types

import pytest

from configs import maskalign_b16_clip_b16
from mim_jax import aot, chips, recommend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V5E = chips.CHIPS["v5e"]


def fake_compile(seen):
  """Memory: 4 GiB of arguments split by fsdp + 16 GiB of activations per chip for the whole
  per-chip batch, divided by the micro-batches and shrunk by remat. Time: compiled FLOPs grow
  with recomputation (dots 1.2x, full 1.33x) and micro-batches (5% each); HBM bytes with
  fsdp's gathers."""
  def compile_fn(c, devices):
    seen.append((c.student.remat, c.mesh.fsdp, c.optim.accumulate_steps, c.student.scan))
    act = 16 * 2**30 / c.optim.accumulate_steps * {"none": 1.0, "dots": 0.5, "full": 0.125}[
        c.student.remat]
    memory = aot.Memory(argument=4 * 2**30 // c.mesh.fsdp, output=0, alias=0, temp=int(act),
                        code=0)
    flops = 197e12 * 0.1 * {"none": 1.0, "dots": 1.2, "full": 4 / 3}[c.student.remat] * (
        1 + 0.05 * (c.optim.accumulate_steps - 1))
    cost = chips.StepCost(flops=flops, hbm_bytes=819e9 * 0.05 * (1 + 0.1 * (c.mesh.fsdp > 1)),
                          model_flops=197e12 * 0.1)
    return memory, cost
  return compile_fn


def test_search_skips_what_cannot_be_faster_and_ranks_by_throughput():
  config = maskalign_b16_clip_b16.get_config("runlocal=True")
  config.batch_size = 64
  devices = [types.SimpleNamespace(device_kind="TPU v5 lite")] * 8
  seen = []
  ranked = recommend.recommend(
      config, devices, 16.0, V5E, remats=["full", "none", "dots"], fsdps=[1, 8],
      accumulates=[1, 2, 4], scans=[False], max_compiles=20, compile_fn=fake_compile(seen),
      log=lambda _: None)
  # none: 4 + 16 / k GiB fits from k = 2 (12 GiB); dots fits at k = 1 (12 GiB); once
  # (none, fsdp 1, k 2) fits, (none, 8, 2), (none, *, 4) cannot be faster; full at k = 1 fits
  # but dots at k = 1 already does with less recomputation: skipped.
  assert seen == [("none", 1, 1, False), ("none", 8, 1, False), ("none", 1, 2, False),
                  ("dots", 1, 1, False)]
  fits = [(c.settings.remat, c.settings.fsdp, c.settings.accumulate) for c in ranked if c.fits]
  # dots, one micro-batch: 0.12 / 197e12 ... compute 120 ms vs none k=2: 105 ms, memory 50 ms
  assert fits == [("none", 1, 2), ("dots", 1, 1)]
  best = ranked[0]
  assert best.step_s == pytest.approx(0.105) and best.images_per_s == pytest.approx(8 / 0.105)
  assert best.mfu_bound == pytest.approx(0.1 / 0.105)
  text = recommend.table(ranked, config, devices, 16.0, V5E)
  assert ("--config.student.remat=none --config.mesh.fsdp=1 --config.optim.accumulate_steps=2 "
          "--config.student.scan=False") in text.splitlines()[2]
  assert "OUT OF MEMORY" in text


def test_search_stops_at_its_compile_budget_and_skips_uneven_splits():
  config = maskalign_b16_clip_b16.get_config("runlocal=True")
  config.batch_size = 24  # 3 per chip: 2 or 4 micro-batches do not divide it
  devices = [types.SimpleNamespace(device_kind="TPU v5 lite")] * 8
  seen, log = [], []
  ranked = recommend.recommend(
      config, devices, 1.0, V5E, remats=["none", "full"], fsdps=[1], accumulates=[1, 2, 4],
      scans=[False, True], max_compiles=2, compile_fn=fake_compile(seen), log=log.append)
  assert seen == [("none", 1, 1, False), ("full", 1, 1, False)]
  assert not any(c.fits for c in ranked)
  assert any("do not split 24 images" in line for line in log)
  assert log[-1] == "  stopped after 2 compiles (--recommend_max_compiles)"
  assert "nothing fits" in recommend.table(ranked, config, devices, 1.0, V5E)


@pytest.mark.slow
def test_command_line_recommend_on_cpu_devices(tiny_vit_teacher_dir):
  """The real step compiled for 4 CPU devices, one candidate: its flags and a throughput."""
  env = dict(os.environ, XLA_FLAGS="")
  r = subprocess.run(
      [sys.executable, "-m", "mim_jax.aot", "--config",
       "configs/maskalign_b16_clip_b16.py:runlocal=True", "--config.batch_size=8",
       f"--config.teacher.spec={tiny_vit_teacher_dir}", "--platform=cpu", "--devices", "4",
       "--hbm_gib=100", "--chip=v5e", "--recommend", "--recommend_remat=full",
       "--recommend_fsdp=2", "--recommend_accumulate=1"],
      capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  row = next(line for line in r.stdout.splitlines() if line.startswith("   1 "))
  assert row.split()[1:6] == ["full", "2", "1", "2", "False"]
  assert row.endswith("--config.student.remat=full --config.mesh.fsdp=2 "
                      "--config.optim.accumulate_steps=1 --config.student.scan=False")
  assert float(row.split()[8]) > 0  # images/s per chip
