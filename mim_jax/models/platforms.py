"""The one choice of platform-specific layer code: which `layers.PlatformOps` a step runs.

A record other than `layers.PORTABLE` is chosen here and nowhere else, from the target the step
is compiled for (which may not be the platform JAX runs on: ahead-of-time compilation for a TPU
topology runs on the CPU) and the config. Today:

  one CPU device, `config.cpu_matmul_layout` (default True) -> `cpu_layout.OPS`
  GPU, `config.attention` "auto" or "cudnn", bf16 matmuls    -> `fused_attention.CUDNN`
  anything else (TPU, a GPU in float32, a mesh of CPUs)      -> `layers.PORTABLE`

`config.attention` (`ATTENTIONS`) is the one attention switch: "xla" is the portable explicit
softmax attention everywhere; "cudnn" asks for cuDNN's fused attention (GPU, bf16 only: refused
elsewhere by `check_attention`); "auto" takes the fastest measured for the platform: cuDNN on a
GPU in bf16, else XLA's. On TPU "auto" is XLA's: the Pallas flash-attention kernel of
jax.experimental.pallas.ops.tpu moves more HBM bytes than XLA's fused softmax at ViT lengths
(197 tokens padded to its 128-blocks, its float32 softmax statistics stored lane-broadcast;
docs/tpu_cost.md, "After"), so no TPU kernel is offered.

A platform's own kernel (e.g. an attention kernel) is another record, built from `PORTABLE`
with `dataclasses.replace` in its own module and returned from `select` for its target.

The target also settles `precision="auto"` (`resolve_precision`): bfloat16 matmul inputs where
the matrix units run them natively (TPU, GPU), float32 on CPU, where bf16 buys nothing (and the
demo's and the tests' numbers stay float32's).
"""
from __future__ import annotations

from typing import Any, Optional

import jax

from mim_jax.models import cpu_layout, fused_attention, layers

DTYPES = ("float32", "bfloat16")  # what a precision resolves to
PRECISIONS = ("auto",) + DTYPES  # what `config.precision` may hold
_AUTO_PRECISION = {"tpu": "bfloat16", "gpu": "bfloat16", "cpu": "float32"}
ATTENTIONS = ("auto", "xla", "cudnn")  # what `config.attention` may hold


def _platform_kind(platform: str) -> str:
  """"tpu", "gpu" or "cpu" for a device's or backend's platform name ("cuda"/"rocm" are GPUs)."""
  return "gpu" if platform in ("cuda", "rocm") else platform


def resolve_precision(requested: str, platform: Optional[str] = None) -> str:
  """The dtype name ("float32" | "bfloat16") of `config.precision` = `requested` on `platform`
  (a device's platform: the devices a step is compiled for; None: JAX's default backend, for
  code that runs where it is).

  "auto" -> bfloat16 on TPU and GPU, float32 on CPU (and any other platform); an explicit
  dtype is kept everywhere (a saved config.json's "float32" stays float32).
  """
  if requested not in PRECISIONS:
    raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}.")
  if requested != "auto":
    return requested
  return _AUTO_PRECISION.get(_platform_kind(platform or jax.default_backend()), "float32")


def for_target(config: Any, platform: str) -> Any:
  """`config`, or a copy whose `precision` is resolved for `platform` (`resolve_precision`):
  what a run assembles and what `mim_jax.aot` compiles, so that the student, the teacher's dtype
  and every report below read one concrete dtype."""
  requested = config.get("precision", "float32")
  resolved = resolve_precision(requested, platform)
  check_attention(config.get("attention", "auto"), resolved, platform)
  if resolved == requested:
    return config
  out = config.copy_and_resolve_references()
  out.precision = resolved
  return out


def check_attention(attention: str, precision: str, platform: str) -> None:
  """ValueError (one line, with the fix) when `config.attention` cannot be honoured on
  `platform` with matmuls in `precision` (a resolved dtype name)."""
  if attention not in ATTENTIONS:
    raise ValueError(f"attention={attention!r} is not one of {ATTENTIONS}.")
  if attention != "cudnn":
    return
  if _platform_kind(platform) != "gpu":
    raise ValueError(f"attention='cudnn' needs a GPU; this step runs on {platform}: use "
                     f"--config.attention=auto (or xla).")
  if precision not in ("bfloat16",):
    raise ValueError(f"attention='cudnn' needs bf16 matmuls (cuDNN's fused attention takes "
                     f"no float32); precision is {precision}: use --config.precision=auto "
                     f"(or bfloat16), or --config.attention=xla.")


def select(platform: str, num_devices: int, config: Any) -> layers.PlatformOps:
  """The `PlatformOps` of a step compiled for `num_devices` devices of `platform` ("cpu",
  "gpu" or "tpu") under `config` (a ConfigDict; reads `attention`, `precision` and
  `cpu_matmul_layout`).

  The CPU layout's copies flatten arrays behind optimization barriers, which would destroy a
  sharded axis: it applies to a single device only.
  """
  attention = config.get("attention", "auto")
  precision = resolve_precision(config.get("precision", "float32"), platform)
  check_attention(attention, precision, platform)
  kind = _platform_kind(platform)
  if kind == "gpu" and attention in ("auto", "cudnn") and precision == "bfloat16":
    return fused_attention.CUDNN
  if kind == "cpu" and num_devices == 1 and config.get("cpu_matmul_layout", True):
    return cpu_layout.OPS
  return layers.PORTABLE
