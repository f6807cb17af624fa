"""benchmarks/gpu_check.sh and what it runs, on the CPU: the refusal without a GPU, the commands
it would run, the GPU/CPU parity script's code path (CPU against CPU) and that each of its checks
fails on a step that differs, and the step-speed benchmark's GPU line."""
import json
import os
import re
import shlex
import subprocess
import sys

import jax
import numpy as np
import pytest

from benchmarks import gpu_parity, step_speed
from mim_jax import step as step_lib, xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPU_CHECK = os.path.join(ROOT, "benchmarks", "gpu_check.sh")


def gpu_check(args, tmp_path, **env):
  env = dict(os.environ, PYTHON=sys.executable, GPU_CHECK_DIR=str(tmp_path / "out"), **env)
  return subprocess.run(["bash", GPU_CHECK, *args], capture_output=True, text=True, env=env,
                        timeout=300)


def test_gpu_check_without_a_gpu_says_so_and_writes_nothing(tmp_path):
  r = gpu_check([], tmp_path, JAX_PLATFORMS="cpu")
  assert r.returncode == 2
  assert r.stderr.startswith("error: no GPU visible to JAX (RuntimeError: Unknown backend: 'gpu'")
  assert "requirements-gpu.txt" in r.stderr
  assert not (tmp_path / "out").exists()


def test_gpu_check_dry_run_lists_every_part(tmp_path):
  r = gpu_check(["--dry-run"], tmp_path, BATCH="64")
  assert r.returncode == 0, r.stderr
  lines = [line[2:].split("    # ") for line in r.stdout.splitlines() if line.startswith("+ ")]
  parts = {name.split(",")[0]: shlex.split(cmd) for cmd, name in lines}
  py = sys.executable
  assert parts["parity"] == [py, "benchmarks/gpu_parity.py", "--platforms", "gpu,cpu", "--batch",
                             "8", "--json", str(tmp_path / "out" / "parity.json")]
  speed = [py, "benchmarks/step_speed.py", "--precision", "bfloat16", "--batch", "64",
           "--steps", "10"]
  assert parts["speed"] == speed
  assert parts["demo"][:5] == [py, "-m", "mim_jax.main", "--config", "configs/demo.py"]
  for name, flag in xla_flags.CANDIDATES.items():  # added to the flags already set
    assert parts[f"flag_{name}"] == ["env", f"XLA_FLAGS={os.environ['XLA_FLAGS']} {flag}", *speed]
  assert len(parts) == 3 + len(xla_flags.CANDIDATES)
  for cmd in parts.values():  # every script it names exists
    script = next(w for w in cmd if w.endswith(".py") or w.startswith("mim_jax."))
    assert os.path.exists(os.path.join(ROOT, script.replace(".", "/") + ".py")
                          if script.startswith("mim_jax.") else os.path.join(ROOT, script))


@pytest.mark.slow
def test_parity_script_cpu_against_cpu(tiny_vit_teacher_dir, tmp_path, capsys):
  out = tmp_path / "parity.json"
  code = gpu_parity.main(["--platforms", "cpu,cpu", "--config-arg", "runlocal=True", "--teacher",
                          tiny_vit_teacher_dir, "--json", str(out)])
  assert code == 0
  text = capsys.readouterr().out
  assert len(re.findall(r": PASS", text)) == 3
  figures = json.loads(out.read_text())
  loss, grad, params = figures["checks"]
  assert loss["a"] == loss["b"] and loss["a"] > 0  # the same program on two CPU devices
  assert grad["rel_l2"] == 0 and params["max_abs_diff"] == 0 and params["clear_count"] > 0
  assert figures["lr"] > 0  # no warmup: the step moved the parameters


@pytest.mark.slow
def test_parity_checks_fail_on_a_step_that_differs_and_pass_on_another_program(
    tiny_vit_teacher_dir):
  """Real steps against a reference step: a different batch (the loss and the gradient must
  catch it), different initial parameters (the parameters after the step must), and the same
  step compiled differently (CPU layout switches off: rounding-level differences, which must
  pass although the steps of parameters with a near-zero gradient differ by ~lr)."""
  rng = np.random.default_rng(0)
  images = [rng.standard_normal((8, 16, 16, 3)).astype(np.float32) for _ in range(2)]

  def step_fn(layout):
    config = step_speed.maskalign_config("float32", 8, "runlocal=True")
    config.cpu_matmul_layout = layout
    config.optim.lr = 1e-3
    teacher = gpu_parity.make_teacher(config, tiny_vit_teacher_dir)
    setup, fn, t_params, batch = step_speed.build(config, teacher, jax.devices()[0], images[0],
                                                  warmup_steps=0)
    other = {"image": jax.device_put(images[1], batch["image"].sharding)}

    def one_step(seed, b):
      state = step_lib.init_state(setup, jax.random.key(seed))
      return gpu_parity.side("cpu", *fn(state, t_params, b), float(config.optim.b1))
    return one_step, batch, other, float(setup.schedule(0))

  one_step, batch, other, lr = step_fn(layout=True)
  ref = one_step(0, batch)
  loss, grad, _ = gpu_parity.compare(ref, one_step(0, other), lr=lr, eps=1e-8)
  assert not loss["ok"] and not grad["ok"]
  params = gpu_parity.compare(ref, one_step(1, batch), lr=lr, eps=1e-8)[2]
  assert not params["ok"] and params["clear_max_abs_diff"] > 1e-3
  assert all(c["ok"] for c in gpu_parity.compare(ref, one_step(0, batch), lr=lr, eps=1e-8))

  other_program = step_fn(layout=False)[0](0, batch)
  checks = gpu_parity.compare(ref, other_program, lr=lr, eps=1e-8)
  assert all(c["ok"] for c in checks), checks
  assert 0 < checks[1]["rel_l2"] < 1e-5
  assert checks[2]["unclear_max_abs_diff"] > 1e-5  # would fail the tolerance if judged


def test_step_speed_gpu_line_gives_img_s_and_mfu_against_the_chip_peak():
  times = (0.1, 0.09, 30.0)  # median, best, first call (s)
  line = step_speed.accelerator_line("bfloat16", 128, times, 700e3, "NVIDIA H100 80GB HBM3")
  # 541 GFLOP per 8 images * 16 / 0.1 s = 86.6 TFLOP/s: 8.75% of 989, 12.4% of the 700 measured
  assert "100.0 ms/step" in line and "1280 img/s" in line and "86.6 TFLOP/s" in line
  assert "MFU  8.8% of the H100's 989 dense bf16 TFLOP/s" in line
  assert "12.4% of the 700 TFLOP/s jnp.dot peak" in line
  line = step_speed.accelerator_line("bfloat16", 128, times, 700e3, "NVIDIA H100 PCIe")
  assert "no MFU: 'NVIDIA H100 PCIe' has no peak in mim_jax/chips.py" in line
  # The CPU keeps its line: GFLOP/s against the measured peak, and the PyTorch bar.
  line = step_speed.cpu_line("float32", 8, (1.42, 1.40, 20.0), 481.0)
  assert "1.42 s/step" in line and "381.0 GFLOP/s = 79.2% of the 481" in line
  assert "2.78 s/step -> 1.96x (target 2.0x)" in line
