"""The one choice of platform-specific layer code: which `layers.PlatformOps` a step runs.

A record other than `layers.PORTABLE` is chosen here and nowhere else, from the target the step
is compiled for (which may not be the platform JAX runs on: ahead-of-time compilation for a TPU
topology runs on the CPU) and the config. Today:

  one CPU device, `config.cpu_matmul_layout` (default True) -> `cpu_layout.OPS`
  anything else (TPU, GPU, a mesh of several CPU devices)   -> `layers.PORTABLE`

A platform's own kernel (e.g. an attention kernel) is another record, built from `PORTABLE`
with `dataclasses.replace` in its own module and returned from `select` for its target.
"""
from __future__ import annotations

from typing import Any

from mim_jax.models import cpu_layout, layers


def select(platform: str, num_devices: int, config: Any) -> layers.PlatformOps:
  """The `PlatformOps` of a step compiled for `num_devices` devices of `platform` ("cpu",
  "gpu" or "tpu") under `config` (a ConfigDict; reads `cpu_matmul_layout`).

  The CPU layout's copies flatten arrays behind optimization barriers, which would destroy a
  sharded axis: it applies to a single device only.
  """
  if platform == "cpu" and num_devices == 1 and config.get("cpu_matmul_layout", True):
    return cpu_layout.OPS
  return layers.PORTABLE
