"""Accelerator figures and a roofline estimate of a compiled step's time.

One table of per-chip peaks (dense bfloat16 matmul FLOP/s, HBM bandwidth, HBM size), each with
the page it comes from. `roofline` turns XLA's cost analysis of a compiled step (FLOPs and bytes
accessed by the program one chip runs) into an ESTIMATE of the step time on each chip: the larger
of the time to do the FLOPs at peak and the time to move the bytes at peak bandwidth. It ignores
collectives, the overlap of compute with memory traffic, and how far each kernel is from peak,
so a real step is slower; its "MFU bound" is the share of peak the estimate allows, not a
measured MFU. XLA's FLOPs include rematerialised (recomputed) work.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  bf16_flops: float  # dense bf16 matmul FLOP/s per chip
  hbm_bytes_per_s: float  # HBM bandwidth per chip
  hbm_gib: float  # HBM per device as JAX sees it (v4/v5p: one megacore device per chip)
  source: str


CHIPS: dict[str, Chip] = {c.name: c for c in (
    # https://cloud.google.com/tpu/docs/v4 : 275 TFLOPs (bf16), HBM2 32 GiB at 1200 GBps.
    Chip("v4", 275e12, 1200e9, 32, "https://cloud.google.com/tpu/docs/v4"),
    # https://cloud.google.com/tpu/docs/v5e : 197 TFLOPs (bf16), HBM2 16 GB at 819 GBps.
    Chip("v5e", 197e12, 819e9, 16, "https://cloud.google.com/tpu/docs/v5e"),
    # https://cloud.google.com/tpu/docs/v5p : 459 TFLOPs (bf16), HBM2e 95 GB at 2765 GBps.
    Chip("v5p", 459e12, 2765e9, 95, "https://cloud.google.com/tpu/docs/v5p"),
    # https://cloud.google.com/tpu/docs/v6e : 918 TFLOPs (bf16), 32 GB at 1640 GBps.
    Chip("v6e", 918e12, 1640e9, 32, "https://cloud.google.com/tpu/docs/v6e"),
    # https://www.nvidia.com/en-us/data-center/h100/ (SXM): BF16 Tensor Core 1,979 TFLOPS is
    # with 2:4 sparsity, dense is half; 80 GB HBM3 at 3.35 TB/s.
    Chip("H100", 989e12, 3.35e12, 80, "https://www.nvidia.com/en-us/data-center/h100/"),
    # https://www.nvidia.com/en-us/data-center/h200/ (SXM): the same Hopper compute (1,979
    # TFLOPS sparse, 989 dense); 141 GB HBM3e at 4.8 TB/s.
    Chip("H200", 989e12, 4.8e12, 141, "https://www.nvidia.com/en-us/data-center/h200/"),
)}


def chip_for_device_kind(device_kind: str) -> Optional[Chip]:
  """The table's chip for a GPU's `jax.devices()[0].device_kind` ("NVIDIA H100 80GB HBM3" ->
  H100, "NVIDIA H200" -> H200), else None. The figures are the SXM boards': the PCIe and NVL
  versions of those GPUs have lower peaks and get None, so no MFU is claimed against a wrong
  peak."""
  words = device_kind.replace("-", " ").split()
  if "PCIe" in words or "NVL" in words:
    return None
  return next((CHIPS[name] for name in ("H100", "H200") if name in words), None)


@dataclasses.dataclass(frozen=True)
class Roofline:
  chip: str
  compute_s: float  # flops / peak FLOP/s
  memory_s: float  # bytes / peak bandwidth
  step_s: float  # max of the two: the estimate
  mfu_bound: float  # compute_s / step_s

  @property
  def bound(self) -> str:
    return "compute" if self.compute_s >= self.memory_s else "memory"


def step_cost(cost: Any) -> tuple[float, float]:
  """(FLOPs, bytes accessed) from `compiled.cost_analysis()` (a dict, or a list of one dict
  per program in some JAX versions); missing entries count 0."""
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  cost = cost or {}
  return float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))


def roofline(flops: float, bytes_accessed: float, chip: Chip) -> Roofline:
  compute = flops / chip.bf16_flops
  memory = bytes_accessed / chip.hbm_bytes_per_s
  step = max(compute, memory)
  return Roofline(chip.name, compute, memory, step, compute / step if step else 0.0)


def roofline_table(cost: Any, target: Optional[str] = None,
                   chips: Mapping[str, Chip] = CHIPS) -> str:
  """The lines `python -m mim_jax.aot` prints: per-chip FLOPs and bytes, then the estimate on
  each chip generation (the target's row marked *)."""
  flops, nbytes = step_cost(cost)
  intensity = f"{flops / nbytes:.0f}" if nbytes else "n/a"
  lines = [f"cost per chip (XLA cost analysis of the compiled step): {flops / 1e12:.3f} TFLOP, "
           f"{nbytes / 1e9:.2f} GB accessed ({intensity} FLOP/byte)",
           "roofline ESTIMATE, not a measurement: step >= max(FLOPs / peak bf16 FLOP/s, bytes / "
           "HBM bandwidth); collectives, overlap and kernel efficiency ignored",
           f"  {'chip':<7}{'bf16 TFLOP/s':>13}{'HBM GB/s':>10}{'compute ms':>12}"
           f"{'memory ms':>11}{'step ms':>10}{'MFU bound':>11}"]
  for name, chip in chips.items():
    r = roofline(flops, nbytes, chip)
    mark = "*" if name == target else " "
    lines.append(f"  {name + mark:<7}{chip.bf16_flops / 1e12:13.0f}{chip.hbm_bytes_per_s / 1e9:10.0f}"
                 f"{r.compute_s * 1e3:12.2f}{r.memory_s * 1e3:11.2f}{r.step_s * 1e3:10.2f}"
                 f"{r.mfu_bound:11.0%}")
  return "\n".join(lines)
