"""XLA flags for GPU training throughput: the one place where this project sets them.

`GPU_FLAGS` is what every process of the package adds to `XLA_FLAGS` (mim_jax/__init__.py calls
`set_gpu_flags` before JAX creates a backend). It is empty: a flag goes in only after
`benchmarks/gpu_check.sh` has measured it to speed up the train step on a GPU against XLA's
defaults, with the figure in docs/gpu.md, and no GPU has run that check yet.

`CANDIDATES` are the flags that check times, one at a time, against the defaults (each flips
one default of XLA's debug options; names checked against the pinned jaxlib by
tests/test_xla_flags.py, since a misspelt flag aborts the process):
  latency_hiding_scheduler  schedules independent work (collectives, copies) to overlap compute
  no_triton_gemm            matmuls from cuBLAS only, no Triton GEMM fusions (autotuned otherwise)
  no_command_buffers        launches kernels one by one instead of as CUDA graphs
  cublaslt                  cuBLASLt GEMMs (bias/activation epilogues fused into the matmul)

jaxlib parses every xla_gpu_* flag whatever the platform (the CPU client accepts and ignores
them), so one XLA_FLAGS string serves every host. A flag already in the environment's XLA_FLAGS
wins over ours (its value is kept).
"""
from __future__ import annotations

import os
from typing import MutableMapping, Sequence

GPU_FLAGS: tuple[str, ...] = ()

CANDIDATES: dict[str, str] = {
    "latency_hiding_scheduler": "--xla_gpu_enable_latency_hiding_scheduler=true",
    "no_triton_gemm": "--xla_gpu_enable_triton_gemm=false",
    "no_command_buffers": "--xla_gpu_enable_command_buffer=",
    "cublaslt": "--xla_gpu_enable_cublaslt=true",
}


def flag_name(flag: str) -> str:
  """"--xla_foo=1" -> "--xla_foo"."""
  return flag.split("=", 1)[0]


def merge(existing: str, flags: Sequence[str]) -> str:
  """`existing` (an XLA_FLAGS string) with each of `flags` appended unless it already sets that
  flag: the environment's value wins."""
  have = {flag_name(f) for f in existing.split()}
  added = [f for f in flags if flag_name(f) not in have]
  return " ".join([existing.strip()] + added if existing.strip() else added)


def set_gpu_flags(environ: MutableMapping[str, str] = os.environ,
                  flags: Sequence[str] = GPU_FLAGS) -> None:
  """Adds `flags` to environ["XLA_FLAGS"] (only when there is something to add)."""
  if flags:
    environ["XLA_FLAGS"] = merge(environ.get("XLA_FLAGS", ""), flags)
