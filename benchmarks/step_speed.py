"""The MaskAlign train step against the official PyTorch bar, in one run.

  python benchmarks/step_speed.py [--precision float32,bfloat16] [--steps 5] [--batch 8]

On a GPU (or TPU) the same command prints ms/step, images/s and MFU instead: the step's FLOPs
over the chip's dense bf16 peak from mim_jax/chips.py (H100, H200; found from
`jax.devices()[0].device_kind`; none is claimed for a chip not in the table), and the fraction
of a bf16 jnp.dot peak measured in the same run. Use a batch that fills the chip (e.g.
`--batch 128`); benchmarks/gpu_check.sh runs it so.

The reference (official PyTorch MaskAlign, ViT-B/16 student, CLIP-B/16 teacher, batch 8, 224 px)
trains on this machine at 2.78 s/step in float32 and 0.91 s/step under bfloat16 autocast (one
quiet run, jemalloc preloaded, the jnp.dot peaks then 425 GFLOP/s float32 and 778 bf16-in/f32-out);
one step is 541 GFLOP. Targets: 2.0x the bar in float32 and 1.2x in bfloat16; at 100% of those
peaks the limits are 2.19x and 1.30x (so the targets need ~92% of the peak). This script times the same step here (random weights in the
real shapes; one CPU device, XLA's threads on all cores), measures the jnp.dot peak in the same
run, and prints seconds per step, GFLOP/s, the fraction of the peak and the speed-up over the
bar. The 541 GFLOP are XLA's count of the step's HLO at batch 8 (`cost_analysis()` of the
lowered step; no rematerialisation in this config), scaled linearly with the batch. Set MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1 with jemalloc preloaded for the best
figures (launch/local.sh does when the machine has libjemalloc).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.teacher_throughput import matmul_peak  # noqa: E402
from configs import maskalign_b16_clip_b16  # noqa: E402
from mim_jax import assembly, chips, sharding, step as step_lib, teachers  # noqa: E402
from mim_jax import config as config_lib  # noqa: E402

STEP_GFLOP = 541.0
PYTORCH_BAR_S = {"float32": 2.78, "bfloat16": 0.91}
TARGET_SPEEDUP = {"float32": 2.0, "bfloat16": 1.2}


def maskalign_config(precision: str, batch: int, arg: str | None = None):
  """The MaskAlign config timed here (ViT-B/16 + CLIP-B/16 unless `arg` says otherwise) at
  `precision`, its teacher in the same dtype."""
  config = maskalign_b16_clip_b16.get_config(arg)
  config.batch_size = batch
  config.precision = precision
  config.teacher.dtype = precision
  return config


def random_teacher(config, name: str = "clip_b16") -> teachers.Teacher:
  """A teacher with random weights in a known model's shapes, matched to the student's grid and
  stored in the teacher's dtype, as `assembly.load_teacher` stores them (frozen: the same bf16
  matmul inputs as float32 weights cast in every step, without the casts)."""
  _, patch = config_lib.decode_variant(config.student.variant)
  teacher = teachers.random_teacher(name, dtype=config.teacher.dtype)
  return teacher.for_student(config.data.image_size, patch)


def build(config, teacher: teachers.Teacher, device, images: np.ndarray, warmup_steps: int = 10):
  """(setup, jitted step, teacher params, batch) of `config` on one device; the state is made
  by the caller (`step_lib.init_state(setup, key)`, or copied in)."""
  mesh = sharding.make_mesh({"data": 1}, devices=[device])
  setup = assembly.make_setup(config, teacher, mesh, total_steps=1000, warmup_steps=warmup_steps)
  t_sh = assembly.teacher_shardings(teacher, mesh)
  t_params = jax.device_put(teacher.params, t_sh)
  batch = {"image": jax.device_put(images, sharding.batch_sharding(mesh, 4))}
  return setup, step_lib.jit_train_step(setup, batch, t_sh), t_params, batch


def make_step(precision: str, batch: int):
  """(setup, jitted step, state, teacher params, batch) of the MaskAlign step timed here:
  random weights in the real shapes, one device."""
  config = maskalign_config(precision, batch)
  images = np.random.default_rng(0).standard_normal((batch, 224, 224, 3)).astype(np.float32)
  setup, fn, t_params, batch_arr = build(config, random_teacher(config), jax.devices()[0], images)
  return setup, fn, step_lib.init_state(setup, jax.random.key(0)), t_params, batch_arr


def time_step(precision: str, batch: int, steps: int) -> tuple[float, float, float]:
  """(median s/step, best s/step, first-call s) of the jitted MaskAlign step."""
  _, fn, state, t_params, batch_arr = make_step(precision, batch)
  start = time.perf_counter()
  state, metrics = fn(state, t_params, batch_arr)
  jax.block_until_ready(metrics)
  first = time.perf_counter() - start
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = fn(state, t_params, batch_arr)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  return float(np.median(times)), float(min(times)), first


def cpu_line(precision: str, batch: int, times: tuple[float, float, float], peak: float) -> str:
  """One CPU result: s/step, GFLOP/s as a fraction of the measured jnp.dot peak (GFLOP/s), and
  the speed-up over the PyTorch bar."""
  median, best, first = times
  rate = STEP_GFLOP * batch / 8 / median
  return (f"{precision:9s} batch {batch}: {median:6.2f} s/step (best {best:.2f}, first "
          f"call {first:.1f} s)  {rate:6.1f} GFLOP/s = {rate / peak:5.1%} of the {peak:.0f} "
          f"GFLOP/s jnp.dot peak measured now; PyTorch bar {PYTORCH_BAR_S[precision]:.2f} s/step "
          f"-> {PYTORCH_BAR_S[precision] / median:.2f}x (target {TARGET_SPEEDUP[precision]:.1f}x)")


def accelerator_line(precision: str, batch: int, times: tuple[float, float, float],
                     peak: float, device_kind: str) -> str:
  """One GPU / TPU result: ms/step, images/s, TFLOP/s, MFU against the chip's dense bf16 peak
  (when chips.py knows the chip) and the fraction of the measured jnp.dot peak (GFLOP/s)."""
  median, best, first = times
  tflops = STEP_GFLOP * batch / 8 / median / 1e3
  chip = chips.chip_for_device_kind(device_kind)
  mfu = (f"MFU {tflops * 1e12 / chip.bf16_flops:5.1%} of the {chip.name}'s "
         f"{chip.bf16_flops / 1e12:.0f} dense bf16 TFLOP/s" if chip else
         f"no MFU: {device_kind!r} has no peak in mim_jax/chips.py")
  return (f"{precision:9s} batch {batch}: {median * 1e3:7.1f} ms/step (best {best * 1e3:.1f}, "
          f"first call {first:.1f} s)  {batch / median:7.0f} img/s  {tflops:6.1f} TFLOP/s = "
          f"{mfu}; {tflops * 1e3 / peak:5.1%} of the {peak / 1e3:.0f} TFLOP/s jnp.dot peak "
          f"measured now ({precision} inputs)")


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--precision", default="float32,bfloat16")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--batch", type=int, default=8)
  args = parser.parse_args()
  device = jax.devices()[0]
  on_cpu = device.platform == "cpu"
  print(f"JAX {jax.__version__} on {device.device_kind}, {os.cpu_count()} cores, "
        f"MALLOC_CONF={os.environ.get('MALLOC_CONF', '-')}, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS') or '-'}", flush=True)
  for precision in args.precision.split(","):
    dtype = "bfloat16" if precision == "bfloat16" else "float32"
    # 2048-cubed saturates a CPU; a GPU needs 8192-cubed (1.1 TFLOP a product) to reach its peak.
    peak = matmul_peak(2048 if on_cpu else 8192, jax.numpy.dtype(dtype), 7)
    times = time_step(precision, args.batch, args.steps)
    line = (cpu_line(precision, args.batch, times, peak) if on_cpu else
            accelerator_line(precision, args.batch, times, peak, device.device_kind))
    print(line, flush=True)


if __name__ == "__main__":
  main()
