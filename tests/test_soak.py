"""The soak tool (mim_jax/tools/soak.py) on a short runlocal demo: it stops the run at the middle,
resumes it, and its figures are measurements of the training process (not placeholders).

The soak itself (thousands of steps) is too long for the suite; its figures are in
docs/reliability.md. Even this short one starts two training processes (and trains the runlocal
demo teacher into a fresh cache): minutes on 2 shared cores, so it runs with the reliability
suite (`pytest -m reliability`), not in the default run.
"""
import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.reliability
@pytest.mark.slow
def test_soak_measures_both_phases_of_a_resumed_run(tmp_path):
  steps = 60
  env = dict(os.environ, PYTHONPATH=ROOT, MIM_JAX_CACHE=str(tmp_path / "cache"))
  r = subprocess.run(
      [sys.executable, "-m", "mim_jax.tools.soak", "--out", str(tmp_path / "soak"),
       "--config", os.path.join(ROOT, "configs", "demo.py") + ":runlocal=True",
       "--steps", str(steps), "--checkpoint-every", "10", "--eval-every", "30",
       "--log-every", "1", "--every", "0.2", "--max-rss-growth", "1000"],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  with open(tmp_path / "soak" / "soak.json") as f:
    report = json.load(f)
  before, after = report["phases"]
  # SIGTERM after the middle: the first run saved where it stopped, the second resumed there
  assert steps // 2 <= before["last"] < steps and after["first"] == before["last"]
  assert after["last"] == steps and before["exit_status"] == after["exit_status"] == 0
  with open(tmp_path / "soak" / "workdir" / "metrics.jsonl") as f:
    assert [json.loads(line)["step"] for line in f] == list(range(1, steps + 1))
  fields = report["sample_fields"]
  for phase in (before, after):
    samples = [dict(zip(fields, s)) for s in phase["samples"]]
    training = [s for s in samples if s["step"] > phase["first"]]
    assert len(training) >= 5
    # a Python process training with JAX: hundreds of MiB, its stdio and more fds, many threads
    assert all(s["rss_mib"] > 100 and s["fds"] >= 3 and s["threads"] > 1 for s in training)
    for measure in ("rss_mib", "fds", "threads", "step_ms"):
      d = phase["drift"][measure]
      assert d["points"] >= 4, measure
      assert all(math.isfinite(d[k]) and d[k] > 0 for k in ("first_quarter", "last_quarter"))
      assert math.isfinite(d["growth_pct"])
  assert "| after resume |" in r.stdout and "rss_mib" in r.stdout
