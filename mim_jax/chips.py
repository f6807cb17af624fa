"""Accelerator figures and a roofline estimate of a compiled step's time.

One table of per-chip peaks (dense bfloat16 matmul FLOP/s, HBM bandwidth, HBM size, interconnect
bandwidth), each with the page it comes from. `roofline` turns the cost of a compiled step (what
one chip runs: `mim_jax.hlo_cost` reads it from the compiled module) into an ESTIMATE of the
step time on each chip: the largest of the time to do its FLOPs at peak, to move its HBM bytes
at peak bandwidth and to send its collectives' bytes at peak interconnect bandwidth. It ignores
the overlap of the three, and how far each kernel is from peak, so a real step is slower; its
"MFU bound" is the model's FLOPs (`mim_jax.model_flops`, no recomputation) over the peak, over
that time: the share of peak the estimate allows, not a measured MFU.
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
  # Bytes per second one chip can send to others over all its links (half the bidirectional
  # figure the pages give); None where no figure is published (collectives then not timed).
  ici_bytes_per_s: Optional[float] = None


CHIPS: dict[str, Chip] = {c.name: c for c in (
    # https://cloud.google.com/tpu/docs/v4 : 275 TFLOPs (bf16), HBM2 32 GiB at 1200 GBps.
    Chip("v4", 275e12, 1200e9, 32, "https://cloud.google.com/tpu/docs/v4"),
    # (The v4 page gives no per-chip interconnect bandwidth: collectives are not timed on v4.)
    # https://cloud.google.com/tpu/docs/v5e : 197 TFLOPs (bf16), HBM2 16 GB at 819 GBps;
    # bidirectional inter-chip interconnect (ICI) bandwidth per chip 400 GBps.
    Chip("v5e", 197e12, 819e9, 16, "https://cloud.google.com/tpu/docs/v5e", 200e9),
    # https://cloud.google.com/tpu/docs/v5p : 459 TFLOPs (bf16), HBM2e 95 GB at 2765 GBps;
    # bidirectional ICI bandwidth per chip 1200 GBps.
    Chip("v5p", 459e12, 2765e9, 95, "https://cloud.google.com/tpu/docs/v5p", 600e9),
    # https://cloud.google.com/tpu/docs/v6e : 918 TFLOPs (bf16), 32 GB at 1640 GBps;
    # bidirectional ICI bandwidth per chip 800 GBps.
    Chip("v6e", 918e12, 1640e9, 32, "https://cloud.google.com/tpu/docs/v6e", 400e9),
    # https://www.nvidia.com/en-us/data-center/h100/ (SXM): BF16 Tensor Core 1,979 TFLOPS is
    # with 2:4 sparsity, dense is half; 80 GB HBM3 at 3.35 TB/s; NVLink 900 GB/s (both
    # directions).
    Chip("H100", 989e12, 3.35e12, 80, "https://www.nvidia.com/en-us/data-center/h100/", 450e9),
    # https://www.nvidia.com/en-us/data-center/h200/ (SXM): the same Hopper compute (1,979
    # TFLOPS sparse, 989 dense); 141 GB HBM3e at 4.8 TB/s; NVLink 900 GB/s.
    Chip("H200", 989e12, 4.8e12, 141, "https://www.nvidia.com/en-us/data-center/h200/", 450e9),
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
class StepCost:
  """What one chip does in one step (per chip, per step).

  flops: the matrix unit's FLOPs as compiled (dots and convolutions; rematerialised
    recomputation included, loops per trip): what the peak bf16 FLOP/s describe.
  other_flops: elementwise and reduction FLOPs as compiled (vector unit; not timed).
  hbm_bytes: bytes read and written in HBM (memory space 0 of the compiled module).
  ici_bytes: bytes sent to other chips by collectives.
  model_flops: the model's FLOPs (`mim_jax.model_flops`), None when not counted.
  total_bytes: bytes in every memory space (HBM and on-chip), loops per trip.
  xla_flops, xla_bytes: XLA's own cost analysis of the same module (loop bodies once, every
    memory space), printed beside for reference.
  """
  flops: float
  hbm_bytes: float
  ici_bytes: float = 0.0
  other_flops: float = 0.0
  model_flops: Optional[float] = None
  total_bytes: Optional[float] = None
  xla_flops: Optional[float] = None
  xla_bytes: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class Roofline:
  chip: str
  compute_s: float  # hardware flops / peak FLOP/s
  memory_s: float  # HBM bytes / HBM bandwidth
  collective_s: Optional[float]  # ICI bytes / ICI bandwidth (None: no bandwidth figure)
  step_s: float  # max of the three: the estimate
  mfu_bound: float  # model FLOPs (else hardware FLOPs) / peak / step_s

  @property
  def bound(self) -> str:
    terms = {"compute": self.compute_s, "memory": self.memory_s,
             "collectives": self.collective_s or 0.0}
    return max(terms, key=terms.get)


def step_cost(cost: Any) -> tuple[float, float]:
  """(FLOPs, bytes accessed) from `compiled.cost_analysis()` (a dict, or a list of one dict
  per program in some JAX versions); missing entries count 0."""
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  cost = cost or {}
  return float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))


def roofline(cost: StepCost, chip: Chip) -> Roofline:
  compute = cost.flops / chip.bf16_flops
  memory = cost.hbm_bytes / chip.hbm_bytes_per_s
  collective = cost.ici_bytes / chip.ici_bytes_per_s if chip.ici_bytes_per_s else None
  step = max(compute, memory, collective or 0.0)
  useful = cost.model_flops if cost.model_flops is not None else cost.flops
  return Roofline(chip.name, compute, memory, collective, step,
                  useful / chip.bf16_flops / step if step else 0.0)


def roofline_table(cost: StepCost, target: Optional[str] = None,
                   chips: Mapping[str, Chip] = CHIPS) -> str:
  """The lines `python -m mim_jax.aot` prints: per-chip FLOPs and bytes, then the estimate on
  each chip generation (the target's row marked *)."""
  lines = [f"cost per chip and step: {cost.flops / 1e12:.3f} TFLOP of matmuls as compiled"
           f" (+ {cost.other_flops / 1e12:.3f} elementwise"
           + (f"; XLA's cost analysis: {cost.xla_flops / 1e12:.3f} in all" if cost.xla_flops
              else "") + ")"
           + (f", model {cost.model_flops / 1e12:.3f} TFLOP (mim_jax/model_flops.py)"
              if cost.model_flops is not None else ""),
           f"  HBM {cost.hbm_bytes / 1e9:.2f} GB read + written"
           f" ({_ratio(cost.flops, cost.hbm_bytes)} FLOP/byte)"
           + (f", every memory space {cost.total_bytes / 1e9:.2f} GB"
              if cost.total_bytes is not None else "")
           + (f", XLA's bytes accessed {cost.xla_bytes / 1e9:.2f} GB"
              f" ({_ratio(cost.xla_flops or cost.flops, cost.xla_bytes)} FLOP/byte)"
              if cost.xla_bytes else "")
           + f"; interconnect {cost.ici_bytes / 1e9:.3f} GB sent",
           "roofline ESTIMATE, not a measurement: step >= max(FLOPs / peak bf16 FLOP/s, HBM "
           "bytes / HBM bandwidth, collective bytes / ICI bandwidth); overlap and kernel "
           "efficiency ignored; MFU bound = "
           + ("model" if cost.model_flops is not None else "compiled") + " FLOPs / peak / step",
           f"  {'chip':<7}{'bf16 TFLOP/s':>13}{'HBM GB/s':>10}{'ICI GB/s':>10}{'compute ms':>12}"
           f"{'memory ms':>11}{'collect. ms':>12}{'step ms':>10}{'MFU bound':>11}"]
  for name, chip in chips.items():
    r = roofline(cost, chip)
    mark = "*" if name == target else " "
    ici = f"{chip.ici_bytes_per_s / 1e9:10.0f}" if chip.ici_bytes_per_s else f"{'-':>10}"
    coll = f"{r.collective_s * 1e3:12.2f}" if r.collective_s is not None else f"{'-':>12}"
    lines.append(f"  {name + mark:<7}{chip.bf16_flops / 1e12:13.0f}"
                 f"{chip.hbm_bytes_per_s / 1e9:10.0f}{ici}{r.compute_s * 1e3:12.2f}"
                 f"{r.memory_s * 1e3:11.2f}{coll}{r.step_s * 1e3:10.2f}{r.mfu_bound:11.0%}")
  return "\n".join(lines)


def _ratio(flops: float, nbytes: float) -> str:
  return f"{flops / nbytes:.0f}" if nbytes else "n/a"
