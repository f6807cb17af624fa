"""Teacher forward throughput against the machine's measured matmul peak, in one run.

  python benchmarks/teacher_throughput.py [--batch 8] [--repeats 3] [--teachers clip_b16,clip_l14]

1. Peak: a large jnp.dot in float32, and in bfloat16 inputs with float32 accumulation (the form
   the layers use), timed on this machine now, so the fractions below compare like with like.
2. Teachers with random weights in the real shapes (zoo.KNOWN): CLIP-B/16 at 224 px and
   CLIP-L/14 at 196 px (its shape under a /16 student at 224), batch 8, float32 and bfloat16,
   jitted `teacher.apply` returning everything a train step takes (all hidden states, final,
   last-layer attention). Images go in at 224 px, so the L/14 figure includes the resize.

FLOPs are counted analytically (2 per multiply-add, matmuls only: patch embedding, qkv, attention
logits and values, output projection, MLP, projection head); XLA's own count is printed too.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from mim_jax import teachers  # pylint: disable=wrong-import-position
from mim_jax.teachers.network import Arch  # pylint: disable=wrong-import-position


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
  """Best wall time of `repeats` calls after one warm-up (compilation) call."""
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return min(times)


def matmul_peak(n: int, dtype, repeats: int) -> float:
  """GFLOP/s of an [n, n] @ [n, n] jnp.dot with `dtype` inputs and float32 accumulation."""
  keys = jax.random.split(jax.random.key(0))
  a, b = (jax.random.normal(k, (n, n), jnp.float32).astype(dtype) for k in keys)
  dot = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
  return 2 * n ** 3 / best_seconds(lambda: dot(a, b), repeats) / 1e9


def forward_flops(arch: Arch, batch: int) -> float:
  """Matmul FLOPs of one forward pass (2 per multiply-add)."""
  n = arch.num_patches
  length = n + 1
  d, m = arch.width, arch.mlp_dim
  patch = 2 * n * (arch.patch * arch.patch * 3) * d
  per_block = 2 * length * (3 * d * d + d * d + 2 * d * m) + 2 * 2 * length * length * d
  head = 2 * d * arch.proj_dim
  return batch * (patch + arch.depth * per_block + head)


def bench_teacher(name: str, batch: int, dtype: str, repeats: int, peak: float) -> None:
  teacher = teachers.random_teacher(name, dtype=dtype).for_student(224, 16)
  images = jnp.asarray(np.random.default_rng(0).standard_normal((batch, 224, 224, 3)),
                       jnp.float32)
  fwd = jax.jit(teacher.apply)
  compiled = fwd.lower(teacher.params, images).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  xla_flops = float((cost or {}).get("flops", float("nan")))
  seconds = best_seconds(lambda: fwd(teacher.params, images), repeats)
  flops = forward_flops(teacher.arch, batch)
  rate = flops / seconds / 1e9
  print(f"{name:9s} {teacher.image_size:4d}px {dtype:9s} batch {batch}: {seconds * 1e3:9.1f} ms  "
        f"{batch / seconds:8.2f} img/s  {rate:8.1f} GFLOP/s  {rate / peak:6.1%} of {dtype} peak  "
        f"(analytic {flops / 1e9:.0f} GFLOP, XLA {xla_flops / 1e9:.0f})", flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--matmul", type=int, default=2048, help="side of the peak matmul")
  parser.add_argument("--teachers", default="clip_b16,clip_l14")
  parser.add_argument("--dtypes", default="float32,bfloat16")
  args = parser.parse_args()

  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} x{jax.device_count()}, "
        f"{os.cpu_count()} CPU threads visible", flush=True)
  dtypes = args.dtypes.split(",")
  peaks = {d: matmul_peak(args.matmul, jnp.dtype(d), args.repeats + 2) for d in dtypes}
  for d, p in peaks.items():
    print(f"jnp.dot peak {args.matmul}^3, {d} inputs, float32 accumulation: {p:8.1f} GFLOP/s",
          flush=True)
  for name in args.teachers.split(","):
    for d in dtypes:
      bench_teacher(name, args.batch, d, args.repeats, peaks[d])


if __name__ == "__main__":
  main()
