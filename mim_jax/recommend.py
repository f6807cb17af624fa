"""`python -m mim_jax.aot ... --recommend`: the settings to run a global batch on a slice.

For a fixed global batch and slice, the levers that trade speed for memory are the remat
policy (recompute activations), fsdp (shard parameters and optimizer state) and images per
chip (gradient accumulation: `optim.accumulate_steps` micro-batches per step, the same update),
and the scanned stack (smaller program). Each candidate is compiled ahead of time (`aot`), its
memory checked against the chip's HBM and its step time ESTIMATED by the roofline of its
compiled module (`chips.roofline`: FLOPs, HBM bytes and collective bytes at peak). The settings
that fit are ranked by predicted images per second per chip.

The search is small and bounded: candidates are tried fastest-first (no remat before dots before
full, one micro-batch before two, fsdp 1 before more), a candidate slower by construction than
one that already fits is skipped (more remat, more micro-batches, more fsdp for the same
others), and at most `max_compiles` compiles run, each logged.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Callable, Optional, Sequence

import ml_collections

from mim_jax import chips

GIB = 2**30
REMAT_ORDER = ("none", "dots", "dots_no_batch", "full")  # fastest (most memory) first


@dataclasses.dataclass(frozen=True)
class Settings:
  remat: str
  fsdp: int
  accumulate: int  # micro-batches per step
  scan: bool

  def flags(self) -> str:
    return (f"--config.student.remat={self.remat} --config.mesh.fsdp={self.fsdp} "
            f"--config.optim.accumulate_steps={self.accumulate} "
            f"--config.student.scan={self.scan}")

  def apply(self, config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    c = config.copy_and_resolve_references()
    c.student.remat, c.mesh.fsdp = self.remat, int(self.fsdp)
    c.optim.accumulate_steps, c.student.scan = int(self.accumulate), bool(self.scan)
    return c

  def slower_or_equal(self, other: "Settings") -> bool:
    """Whether this candidate can be no faster than `other` (same scan): at least as much
    recomputation, as many micro-batches and as much parameter sharding."""
    return (self.scan == other.scan and REMAT_ORDER.index(self.remat) >= REMAT_ORDER.index(
        other.remat) and self.accumulate >= other.accumulate and self.fsdp >= other.fsdp)


@dataclasses.dataclass
class Candidate:
  settings: Settings
  total: Optional[int] = None  # bytes per device; None: the compiler refused it
  cost: Optional[chips.StepCost] = None
  error: str = ""
  fits: bool = False
  step_s: float = 0.0
  images_per_s: float = 0.0  # per chip
  mfu_bound: float = 0.0


CompileFn = Callable[[ml_collections.ConfigDict, Sequence[Any]], tuple[Any, chips.StepCost]]


def candidates(remats: Sequence[str], fsdps: Sequence[int], accumulates: Sequence[int],
               scans: Sequence[bool]) -> list[Settings]:
  """Every combination, fastest-looking first."""
  out = [Settings(r, int(f), int(a), bool(s)) for s, r, a, f in itertools.product(
      scans, sorted(remats, key=REMAT_ORDER.index), sorted(accumulates), sorted(fsdps))]
  return out


def recommend(config: ml_collections.ConfigDict, devices: Sequence[Any], hbm_gib: float,
              chip: chips.Chip, *, remats: Sequence[str], fsdps: Sequence[int],
              accumulates: Sequence[int], scans: Sequence[bool], max_compiles: int,
              compile_fn: CompileFn, log: Callable[[str], None] = print) -> list[Candidate]:
  """Compiles candidates (at most `max_compiles`) and returns them ranked: those that fit
  first, by predicted images per second per chip. `compile_fn(config, devices) -> (Memory,
  StepCost)`; it raises `aot.CompilerOutOfMemory` (any MemoryError) when the compiler refuses
  the step and ValueError for a mesh or batch that does not fit the devices."""
  done: list[Candidate] = []
  per_chip = config.batch_size / len(devices)
  shards = len(devices) // max(int(config.mesh.get("model", 1)), 1)  # the batch's shards
  compiles = 0
  for s in candidates(remats, fsdps, accumulates, scans):
    if any(c.fits and s.slower_or_equal(c.settings) for c in done):
      continue  # something at least as fast already fits
    if config.batch_size % (s.accumulate * shards):
      log(f"  {s.flags()}: skipped, {s.accumulate} micro-batches do not split "
          f"{config.batch_size} images over {shards} shards")
      continue
    if compiles >= max_compiles:
      log(f"  stopped after {max_compiles} compiles (--recommend_max_compiles)")
      break
    cand = Candidate(s)
    try:
      compiles += 1
      memory, cost = compile_fn(s.apply(config), devices)
      cand.total, cand.cost = memory.total, cost
      cand.fits = memory.total <= hbm_gib * GIB
    except MemoryError:
      cand.error = "refused by the compiler (out of memory)"
    except ValueError as e:  # a mesh or accumulation that does not divide the batch
      compiles -= 1
      cand.error = str(e).split(";")[0]
      log(f"  {s.flags()}: skipped, {cand.error}")
      continue
    if cand.cost is not None:
      r = chips.roofline(cand.cost, chip)
      cand.step_s, cand.mfu_bound = r.step_s, r.mfu_bound
      cand.images_per_s = per_chip / r.step_s if r.step_s else 0.0
    log(f"  compile {compiles}: {s.flags()}: "
        + (cand.error or f"{cand.total / GIB:.2f} GiB per device, "
           + ("fits" if cand.fits else "OUT OF MEMORY")
           + f", step >= {cand.step_s * 1e3:.1f} ms on {chip.name}"))
    done.append(cand)
  return sorted(done, key=lambda c: (not c.fits, -c.images_per_s))


def table(ranked: Sequence[Candidate], config: ml_collections.ConfigDict, devices: Sequence[Any],
          hbm_gib: float, chip: chips.Chip) -> str:
  chips_n = len(devices)
  lines = [f"settings for global batch {config.batch_size} on {devices[0].device_kind} x "
           f"{chips_n} ({config.batch_size / chips_n:g} images per chip per step), ranked by "
           f"predicted images/s per chip (roofline ESTIMATE on {chip.name}; within "
           f"{hbm_gib:g} GiB):",
           f"  {'#':>2} {'remat':<14}{'fsdp':>5}{'micro':>6}{'per chip':>9}{'scan':>6}{'GiB':>7}"
           f"{'step ms':>9}{'img/s/chip':>11}{'MFU bound':>10}  flags"]
  for i, c in enumerate(ranked, 1):
    s = c.settings
    micro = config.batch_size // chips_n // s.accumulate if s.accumulate else 0
    gib = f"{c.total / GIB:.2f}" if c.total is not None else "-"
    if c.fits:
      lines.append(f"  {i:>2} {s.remat:<14}{s.fsdp:>5}{s.accumulate:>6}{micro:>9}"
                   f"{str(s.scan):>6}{gib:>7}{c.step_s * 1e3:9.1f}{c.images_per_s:11.1f}"
                   f"{c.mfu_bound:10.0%}  {s.flags()}")
    else:
      lines.append(f"   - {s.remat:<14}{s.fsdp:>5}{s.accumulate:>6}{micro:>9}{str(s.scan):>6}"
                   f"{gib:>7}  {c.error or 'OUT OF MEMORY'}")
  if not any(c.fits for c in ranked):
    lines.append("  nothing fits: allow more micro-batches (--recommend_accumulate), remat "
                 "full, or more fsdp.")
  return "\n".join(lines)
