"""The MaskAlign train step against the official PyTorch bar, in one run.

  python benchmarks/step_speed.py [--precision float32,bfloat16] [--steps 5] [--batch 8]

The reference (official PyTorch MaskAlign, ViT-B/16 student, CLIP-B/16 teacher, batch 8, 224 px)
trains on this machine at 2.78 s/step in float32 and 0.91 s/step under bfloat16 autocast (one
quiet run, jemalloc preloaded, the jnp.dot peaks then 425 GFLOP/s float32 and 778 bf16-in/f32-out);
one step is 541 GFLOP. Targets: 2.0x the bar in float32 and 1.2x in bfloat16; at 100% of those
peaks the limits are 2.19x and 1.30x (so the targets need ~92% of the peak). This script times the same step here (random weights in the
real shapes; one CPU device, XLA's threads on all cores), measures the jnp.dot peak in the same
run, and prints seconds per step, GFLOP/s, the fraction of the peak and the speed-up over the
bar. Set MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1 with jemalloc preloaded for the best
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
from mim_jax import assembly, sharding, step as step_lib, teachers  # noqa: E402

STEP_GFLOP = 541.0
PYTORCH_BAR_S = {"float32": 2.78, "bfloat16": 0.91}
TARGET_SPEEDUP = {"float32": 2.0, "bfloat16": 1.2}


def make_step(precision: str, batch: int):
  """(setup, jitted step, state, teacher params, batch) of the MaskAlign step timed here:
  random weights in the real shapes, one CPU device."""
  config = maskalign_b16_clip_b16.get_config()
  config.batch_size = batch
  config.precision = precision
  config.teacher.dtype = precision
  # Teacher weights stored in the teacher's dtype, as `assembly.load_teacher` stores them (frozen:
  # the same bf16 matmul inputs as float32 weights cast in every step, without the casts).
  teacher = teachers.random_teacher("clip_b16", dtype=precision).for_student(224, 16)
  mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
  setup = assembly.make_setup(config, teacher, mesh, total_steps=1000, warmup_steps=10)
  state = step_lib.init_state(setup, jax.random.key(0))
  t_sh = assembly.teacher_shardings(teacher, mesh)
  t_params = jax.device_put(teacher.params, t_sh)
  images = np.random.default_rng(0).standard_normal((batch, 224, 224, 3)).astype(np.float32)
  batch_arr = {"image": jax.device_put(images, sharding.batch_sharding(mesh, 4))}
  return setup, step_lib.jit_train_step(setup, batch_arr, t_sh), state, t_params, batch_arr


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


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--precision", default="float32,bfloat16")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--batch", type=int, default=8)
  args = parser.parse_args()
  print(f"JAX {jax.__version__} on {jax.devices()[0].device_kind}, {os.cpu_count()} cores, "
        f"MALLOC_CONF={os.environ.get('MALLOC_CONF', '-')}", flush=True)
  for precision in args.precision.split(","):
    dtype = "bfloat16" if precision == "bfloat16" else "float32"
    peak = matmul_peak(2048, jax.numpy.dtype(dtype), 7)
    median, best, first = time_step(precision, args.batch, args.steps)
    rate = STEP_GFLOP * args.batch / 8 / median
    print(f"{precision:9s} batch {args.batch}: {median:6.2f} s/step (best {best:.2f}, first "
          f"call {first:.1f} s)  {rate:6.1f} GFLOP/s = {rate / peak:5.1%} of the {peak:.0f} "
          f"GFLOP/s jnp.dot peak measured now; PyTorch bar {PYTORCH_BAR_S[precision]:.2f} s/step "
          f"-> {PYTORCH_BAR_S[precision] / median:.2f}x (target {TARGET_SPEEDUP[precision]:.1f}x)",
          flush=True)


if __name__ == "__main__":
  main()
