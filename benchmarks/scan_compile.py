r"""Compile time of the student's forward + backward with and without `student.scan`.

  python benchmarks/scan_compile.py --variant L/16 [--batch 8] [--precision bfloat16]

Lowers and compiles `jax.value_and_grad` of the student's mean squared output on the first
device (abstract arguments: nothing is run) and prints the seconds each takes. For a whole
step on a TPU topology, time `python -m mim_jax.aot ... --config.student.scan=True` instead.
"""
from __future__ import annotations

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

from mim_jax.models.vit import ViT


def compile_seconds(variant: str, scan: bool, batch: int, dtype) -> tuple[float, float]:
  """(lower seconds, compile seconds) of the student's loss and gradients."""
  model = ViT.from_variant(variant, scan=scan, dtype=dtype)
  size = model.image_size
  images = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
  params = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), images))["params"]

  def loss(p, x):
    return jnp.mean(model.apply({"params": p}, x)[0] ** 2)

  t0 = time.perf_counter()
  lowered = jax.jit(jax.value_and_grad(loss)).lower(params, images)
  t1 = time.perf_counter()
  lowered.compile()
  return t1 - t0, time.perf_counter() - t1


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--variant", default="L/16")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--precision", default="float32", choices=("float32", "bfloat16"))
  a = p.parse_args()
  for scan in (False, True):
    lower, comp = compile_seconds(a.variant, scan, a.batch, jnp.dtype(a.precision))
    print(f"{a.variant} {a.precision} batch {a.batch} on {jax.devices()[0].device_kind}, "
          f"scan={scan}: lower {lower:.1f} s, compile {comp:.1f} s", flush=True)


if __name__ == "__main__":
  main()
