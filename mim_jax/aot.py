r"""Ahead-of-time compilation of the real train step for a target topology, and its memory.

  python -m mim_jax.aot --config configs/maskalign_b16_clip_b16.py --topology v5e:16x16 \
      --config.batch_size=4096 [--config.mesh.fsdp=16 ...]
  python -m mim_jax.aot --config configs/maskalign_b16_clip_b16.py:runlocal=True \
      --platform cpu --devices 8   (the demo's teacher, as `main` finds it: trained on first use)
  python -m mim_jax.aot ... --sweep --sweep_remat=none,full --sweep_fsdp=1,16
      (the largest global batch that fits, per remat policy and fsdp value)
  python -m mim_jax.aot ... --breakdown      (where the step's FLOPs and HBM bytes go)
  python -m mim_jax.aot ... --recommend      (remat / fsdp / micro-batches / scan, ranked)

Out-of-memory shows up here, on a laptop, instead of on the pod: the step that `train.py` runs is
built from the same config by the same code (`assembly.load_teacher` reading only the teachers'
config.json, `assembly.make_setup`, the same shardings and donation), lowered with abstract
arguments (`jax.ShapeDtypeStruct`; no parameter, teacher weight or image is ever materialised)
and compiled by XLA for the target's devices. The compiler's own memory analysis per device is
then compared with the chip's HBM, and the compiled module's cost read per instruction
(`mim_jax/hlo_cost.py`: FLOPs, HBM bytes, collective bytes, loops per trip) with the model's
FLOPs (`mim_jax/model_flops.py`) gives a roofline estimate of the step time per chip generation
(`mim_jax/chips.py`). Exit status: 0 fits, 1 OUT OF MEMORY, 2 bad input.

TPU topologies (`--platform tpu`, the default) need libtpu (`pip install -r
requirements-tpu.txt`); no TPU is needed: `jax.experimental.topologies` makes compile-only devices
for any slice shape, e.g. v4:4x4x8, v5e:16x16, v5p:4x4x8, v6e:16x16 (generation:chips per axis).
JAX itself keeps to the CPU (`JAX_PLATFORMS=cpu` is the default here).
`--platform cpu --devices N` compiles for N simulated CPU devices instead (what the tests use; its
memory figures describe the CPU program, not a TPU's).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
from typing import Any, Iterator, Mapping, Optional, Sequence


def _set_cpu_device_count(argv: Sequence[str]) -> None:
  """`--platform cpu [--devices N]` (N = 8 by default) must reach XLA before its CPU client
  exists, so the command line is read here, ahead of absl."""
  args = " ".join(argv).replace("=", " ").split()
  if "--platform" not in args or args[args.index("--platform") + 1:][:1] != ["cpu"]:
    return
  num = args[args.index("--devices") + 1] if "--devices" in args[:-1] else "8"
  if num.isdigit():
    kept = [f for f in os.environ.get("XLA_FLAGS", "").split()
            if not f.startswith("--xla_force_host_platform_device_count")]
    os.environ["XLA_FLAGS"] = " ".join(kept + [f"--xla_force_host_platform_device_count={num}"])


if __name__ == "__main__":  # the command line: before JAX and TF read their environment
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compile-only TPU devices need no attached TPU
  _set_cpu_device_count(sys.argv[1:])

# pylint: disable=wrong-import-position
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mim_jax import assembly
from mim_jax import checkpoint as ckpt_lib
from mim_jax import chips
from mim_jax import config as config_lib
from mim_jax import demo
from mim_jax import hlo_cost
from mim_jax import model_flops
from mim_jax import recommend
from mim_jax import sharding as sharding_lib
from mim_jax import step as step_lib
from mim_jax import teachers
from mim_jax.models import layers, platforms

GIB = 2**30

# HBM per JAX device (mim_jax/chips.py, with sources). On v4 and v5p a device is a whole chip
# (megacore: both TensorCores as one).
HBM_GIB: dict[str, float] = {g: chips.CHIPS[g].hbm_gib for g in ("v4", "v5e", "v5p", "v6e")}

# `device.device_kind` of each generation's devices -> the generation's name above.
_GENERATION_OF_KIND: dict[str, str] = {
    "TPU v4": "v4", "TPU v5 lite": "v5e", "TPU v5e": "v5e", "TPU v5": "v5p", "TPU v5p": "v5p",
    "TPU v6 lite": "v6e", "TPU v6e": "v6e",
}

# Without "megacore", libtpu describes a v4 chip as two devices (one per TensorCore); a pod job
# sees one device per chip, so the compile must too. (v5p is megacore by default; asked anyway.)
_MEGACORE = ("v4", "v5p")


# --------------------------------------------------------------------------------------------
# Devices.
# --------------------------------------------------------------------------------------------
def tpu_devices(topology: str) -> list[Any]:
  """Compile-only devices of a TPU slice, e.g. "v5e:16x16" (256 chips) or "v5p:4x4x8" (128).

  Raises ImportError when libtpu is missing, ValueError for a malformed name.
  """
  generation, sep, dims = topology.partition(":")
  if not sep or not dims or not all(d.isdigit() for d in dims.split("x")):
    raise ValueError(f"Bad topology {topology!r}: expected <generation>:<chips per axis>, "
                     f"e.g. v5e:16x16 or v5p:4x4x8; generations: {sorted(HBM_GIB)}.")
  try:
    import libtpu  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError as e:
    raise ImportError("TPU topologies need libtpu: pip install -r requirements-tpu.txt "
                      "(or use --platform cpu).") from e
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  shape = [int(d) for d in dims.split("x")]
  kwargs: dict[str, Any] = {"chip_config_name": "megacore"} if generation in _MEGACORE else {}
  if math.prod(shape) < 4:  # smaller than one host's 2x2 chips: the slice is the host
    kwargs["chips_per_host_bounds"] = tuple(shape + [1] * (3 - len(shape)))
  try:
    with _compile_only_libtpu_env(generation, math.prod(shape)):
      return list(topologies.get_topology_desc(platform="tpu", topology_name=topology,
                                               **kwargs).devices)
  except jax.errors.JaxRuntimeError as e:
    raise ValueError(f"libtpu refuses topology {topology!r}: {e}") from None


@contextlib.contextmanager
def _compile_only_libtpu_env(generation: str, chips: int) -> Iterator[None]:
  """What libtpu would otherwise look for in a TPU VM's metadata, while it loads.

  Its lock file allows one libtpu process per machine, for the chips' sake: a compile-only
  client owns no chip, so several (tests, parallel checks) may run. Without a host description
  it prints warnings about an unknown accelerator; the slice described here is the target's.
  The variables are taken back afterwards: left set, they would tell every process started
  from this one (a training run) that it is a worker of a TPU pod (`main`'s --distributed).
  """
  cores = chips * 2 if generation in _MEGACORE else chips  # v4/v5p names count TensorCores
  name = {"v5e": "v5litepod"}.get(generation, generation)
  wanted = {"ALLOW_MULTIPLE_LIBTPU_LOAD": "1", "TPU_ACCELERATOR_TYPE": f"{name}-{cores}",
            "TPU_WORKER_HOSTNAMES": "localhost"}
  added = [key for key in wanted if key not in os.environ]
  os.environ.update({key: wanted[key] for key in added})
  try:
    yield
  finally:
    for key in added:
      os.environ.pop(key, None)


def cpu_devices(num_devices: int) -> list[Any]:
  """The first `num_devices` CPU devices (simulated ones: see `_set_cpu_device_count`)."""
  devices = jax.devices("cpu")
  if len(devices) < num_devices:
    raise ValueError(f"{num_devices} CPU devices asked for, {len(devices)} exist: set XLA_FLAGS="
                     f"--xla_force_host_platform_device_count={num_devices} before JAX starts.")
  return devices[:num_devices]


def hbm_gib(devices: Sequence[Any]) -> Optional[float]:
  """The HBM of one device of a known TPU generation, else None."""
  generation = _GENERATION_OF_KIND.get(devices[0].device_kind)
  return HBM_GIB.get(generation) if generation else None


# --------------------------------------------------------------------------------------------
# Abstract arguments.
# --------------------------------------------------------------------------------------------
def abstract_batch(config: ml_collections.ConfigDict, setup: step_lib.Setup) -> dict:
  """What the input pipeline yields for one global batch, as sharded ShapeDtypeStructs:
  {"image": f32 [B, S, S, 3], "label": i32 [B]} (+ "mask": u8 [B, N] for block masks)."""
  b, s = config.batch_size, config.data.image_size
  spec = {"image": jax.ShapeDtypeStruct((b, s, s, 3), jnp.float32),
          "label": jax.ShapeDtypeStruct((b,), jnp.int32)}
  if config.mask.get("kind") == "block":
    spec["mask"] = jax.ShapeDtypeStruct((b, setup.num_patches), jnp.uint8)
  shardings = step_lib.batch_shardings(setup.mesh, spec)
  return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=shardings[k])
          for k, v in spec.items()}


def _schedule_steps(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """(total, warmup) steps for the schedule. Its length changes constants in the program, not
  its shapes or memory, so no dataset is opened to turn epochs into steps."""
  total = config.get("total_steps") or 1000
  return total, min(config.get("warmup_steps") or 0, total)


# --------------------------------------------------------------------------------------------
# Compile and measure.
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Memory:
  """Bytes per device from XLA's memory analysis of the compiled step."""
  argument: int  # state, teacher parameters, batch shard
  output: int    # new state, metrics
  alias: int     # outputs written in place of donated arguments (counted in both above)
  temp: int      # activations, gradients, collectives' buffers
  code: int      # generated code

  @property
  def total(self) -> int:
    """Bytes live at once at worst: donated buffers are counted once."""
    return self.argument + self.output - self.alias + self.temp + self.code


def memory_of(compiled: Any) -> Memory:
  m = compiled.memory_analysis()
  return Memory(argument=m.argument_size_in_bytes, output=m.output_size_in_bytes,
                alias=m.alias_size_in_bytes, temp=m.temp_size_in_bytes,
                code=m.generated_code_size_in_bytes)


class CompilerOutOfMemory(MemoryError):
  """XLA could not fit the step into the device's memory even with rematerialisation (TPU
  compilers plan for the chip's HBM and refuse what cannot fit: RESOURCE_EXHAUSTED)."""


@dataclasses.dataclass
class Compiled:
  compiled: Any  # jax.stages.Compiled
  setup: step_lib.Setup
  memory: Memory
  mesh_shape: dict[str, int]
  teacher_bytes: int = 0  # per device: the teachers' parameter shards among the arguments


def lower_step(config: ml_collections.ConfigDict, devices: Sequence[Any]
               ) -> tuple[Any, step_lib.Setup, Any, Any]:
  """(jax.stages.Lowered, setup, mesh, abstract teacher params) of the train step of `config`
  for `devices` (abstract or real), with `precision` "auto" resolved for their platform."""
  config = platforms.for_target(config, devices[0].platform)
  mesh = sharding_lib.make_mesh(config.mesh, devices=devices)
  teacher = assembly.load_teacher(config, abstract=True)  # the run's code, no weight read
  setup = assembly.make_setup(config, teacher, mesh, *_schedule_steps(config))
  abstract, state_sh = step_lib.state_shardings(setup)
  state = ckpt_lib.abstract_with_shardings(abstract, state_sh)
  t_sh, t_params = None, None
  if teacher is not None:
    t_sh = assembly.teacher_shardings(teacher, mesh)
    t_params = ckpt_lib.abstract_with_shardings(assembly.teacher_params(teacher), t_sh)
  batch = abstract_batch(config, setup)
  step = step_lib.jit_train_step(setup, batch, t_sh)
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding_lib.LOGICAL_RULES):
    return step.jitted.lower(state, t_params, batch), setup, mesh, t_params


def compile_step(config: ml_collections.ConfigDict, devices: Sequence[Any]) -> Compiled:
  """Lowers and compiles the train step of `config` for `devices` (abstract or real)."""
  lowered, setup, mesh, t_params = lower_step(config, devices)
  try:
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    raise CompilerOutOfMemory(str(e)) from None
  return Compiled(compiled=compiled, setup=setup, memory=memory_of(compiled),
                  mesh_shape=dict(mesh.shape), teacher_bytes=shard_bytes(t_params))


def step_cost(result: Compiled) -> tuple[chips.StepCost, hlo_cost.ModuleCost]:
  """The compiled step's cost per chip, and its per-instruction reading (`mim_jax.hlo_cost`:
  loops counted per trip, HBM bytes apart) with the model's FLOPs (`mim_jax.model_flops`) and
  XLA's own totals of the same compiled module beside."""
  module = hlo_cost.analyze(result.compiled.as_text(), math.prod(result.mesh_shape.values()))
  xla_flops, xla_bytes = chips.step_cost(result.compiled.cost_analysis())
  return hlo_cost.step_cost(module, model_flops=model_flops_per_chip(result),
                            xla_flops=xla_flops, xla_bytes=xla_bytes), module


def model_flops_per_chip(result: Compiled) -> Optional[float]:
  """The model's FLOPs of one step (`mim_jax.model_flops`) over the devices; None where no count
  exists (the hybrid student)."""
  try:
    total = model_flops.count(result.setup.config, result.setup.teacher).total
  except NotImplementedError:
    return None
  return total / math.prod(result.mesh_shape.values())


def save_hlo(result: Compiled, path: str) -> None:
  """The compiled module's text at `path`, and beside it (<path>.json) XLA's own figures of the
  same compile: cost analysis (flops, bytes accessed) and memory analysis, per device."""
  import json  # pylint: disable=import-outside-toplevel
  with open(path, "w") as fh:
    fh.write(result.compiled.as_text())
  flops, nbytes = chips.step_cost(result.compiled.cost_analysis())
  with open(path + ".json", "w") as fh:
    json.dump({"flops": flops, "bytes accessed": nbytes,
               "model_flops": model_flops_per_chip(result),
               "memory": dataclasses.asdict(result.memory), "mesh": result.mesh_shape}, fh,
              indent=1)


def shard_bytes(tree: Any) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs (0 for None)."""
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
             for x in jax.tree.leaves(tree))


def report(result: Compiled, devices: Sequence[Any], hbm: Optional[float],
           breakdown: int = 0) -> tuple[str, bool]:
  """(a printable table, fits). Without a known HBM size `fits` is True and no verdict is given.
  `breakdown` > 0 adds where the step's FLOPs and bytes go (that many costliest instructions)."""
  m = result.memory
  config = result.setup.config
  per_device = config.batch_size // max(result.mesh_shape["data"] * result.mesh_shape["fsdp"], 1)
  each = teachers.each(result.setup.teacher)
  teacher = ", ".join(f"{t.name} ({t.dtype}, grid {t.grid}, {t.image_size} px)" for t in each)
  lines = [
      f"{devices[0].device_kind} x {len(devices)} devices "
      f"({len({d.process_index for d in devices})} hosts), mesh {result.mesh_shape}",
      f"{config.method}: student {config.student.variant}"
      + (f", teacher{'s' * (len(each) > 1)} {teacher}" if each else "")
      + f", precision {config.get('precision', 'float32')}, global batch {config.batch_size} "
      f"({per_device} per device)",
      "",
      f"  {'memory per device':<42}{'MiB':>11}{'GiB':>9}",
  ]
  rows = [("arguments (state, teacher, batch)", m.argument),
          ("  of which teacher weights", result.teacher_bytes), ("outputs", m.output),
          ("  of which aliased to donated args", m.alias), ("temporaries", m.temp),
          ("generated code", m.code), ("total (args + out - alias + temp + code)", m.total)]
  lines += [f"  {name:<42}{value / 2**20:11.1f}{value / GIB:9.3f}" for name, value in rows]
  cost, module = step_cost(result)
  roof = ["", chips.roofline_table(cost, target=_GENERATION_OF_KIND.get(devices[0].device_kind))]
  roof += hlo_cost.notes(module, cost)
  if breakdown:
    roof += ["", hlo_cost.breakdown(module, top=breakdown)]
  if hbm is None:
    lines.append("  (no HBM size known for this device: no verdict; pass --hbm_gib)")
    return "\n".join(lines + roof), True
  need = m.total / GIB
  fits = need <= hbm
  lines.append(f"  {'HBM per device':<42}{hbm * 1024:11.1f}{hbm:9.3f}")
  lines.append("")
  tight = " (under 10% left for the runtime and fragmentation: tight)" if need > 0.9 * hbm else ""
  lines.append(f"OK: fits, {need / hbm:.0%} of HBM{tight}" if fits else
               f"OUT OF MEMORY: needs {need:.2f} GiB of {hbm:g} GiB per device.")
  if not fits:
    lines += ["", "Levers, largest first where activations dominate (temporaries "
              f"{m.temp / GIB:.2f} GiB, arguments {m.argument / GIB:.2f} GiB):"]
    lines += [f"  {lever}" for lever in levers(config, result.mesh_shape, m)]
  return "\n".join(lines + roof), fits


def levers(config: ml_collections.ConfigDict, mesh_shape: dict[str, int],
           m: Optional[Memory] = None) -> list[str]:
  """What would lower the per-device memory of this step, from the config and the memory (None
  when the compiler refused the step before reporting it)."""
  out = []
  if config.student.get("remat", "none") in ("none", "dots"):
    out.append("--config.student.remat=full (recompute each block in the backward pass: "
               "activations of one block instead of all)")
  per_device = config.batch_size // max(mesh_shape["data"] * mesh_shape["fsdp"], 1)
  if per_device > 1:
    out.append(f"--config.batch_size={config.batch_size // 2} ({per_device // 2} per device)")
  if m is None or m.argument > m.temp / 4:
    out.append(f"--config.mesh.fsdp={mesh_shape['fsdp'] * 2} (shard parameters and optimizer "
               f"state over more devices; now {mesh_shape['fsdp']})")
  if config.get("precision", "float32") == "float32":
    out.append("--config.precision=bfloat16 (bf16 matmul inputs; the teacher in bf16 too)")
  return out


def describe(config: ml_collections.ConfigDict, devices: Sequence[Any]) -> str:
  """The line printed before compiling: what is compiled for what."""
  mesh = dict(zip(sharding_lib.MESH_AXES, sharding_lib.mesh_shape(dict(config.mesh),
                                                                  len(devices))))
  per_device = config.batch_size // max(mesh["data"] * mesh["fsdp"], 1)
  precision = platforms.resolve_precision(config.get("precision", "float32"),
                                          devices[0].platform)
  return (f"compiling the {config.method} step for {devices[0].device_kind} x {len(devices)}: "
          f"mesh {mesh}, {per_device} images per device (global {config.batch_size}), "
          f"precision {precision}, remat "
          f"{config.student.get('remat', 'none')}")
  return "\n".join(lines), fits


# --------------------------------------------------------------------------------------------
# Sweep: the largest batch that fits, per remat policy and fsdp.
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SweepRow:
  remat: str
  fsdp: int
  batch: Optional[int]  # the largest global batch that fitted; None: not even the first
  total: Optional[int]  # its bytes per device
  stop: str  # why the doubling stopped: "OUT OF MEMORY at <b>", "cap <b>", or a bad mesh


def sweep(config: ml_collections.ConfigDict, devices: Sequence[Any], hbm: float, *,
          remats: Sequence[str], fsdps: Sequence[int], max_batch: int,
          compile_fn=None, log=print) -> list[SweepRow]:
  """For each (remat, fsdp): compile with the global batch doubling from `config.batch_size`,
  stopping at the first that does not fit `hbm` GiB per device (or past `max_batch`). Compile
  only; each compile is logged. `compile_fn(config, devices) -> Memory` (default: the real step)."""
  compile_fn = compile_fn or (lambda c, d: compile_step(c, d).memory)
  rows = []
  for remat in remats:
    for fsdp in fsdps:
      c = config.copy_and_resolve_references()
      c.student.remat, c.mesh.fsdp = remat, int(fsdp)
      batch, best, stop = int(config.batch_size), None, ""
      while not stop:
        if batch > max_batch:
          stop = f"cap {max_batch}"
          break
        c.batch_size = batch
        try:
          memory = compile_fn(c, devices)
        except CompilerOutOfMemory:
          memory = None
        except ValueError as e:  # a mesh or batch that does not fit the devices
          stop = str(e).split(";")[0]
          break
        fits = memory is not None and memory.total <= hbm * GIB
        log(f"  remat={remat} fsdp={fsdp} batch={batch}: " +
            (f"{memory.total / GIB:.2f} GiB per device" if memory else "refused by the compiler")
            + (" fits" if fits else " OUT OF MEMORY"))
        if not fits:
          stop = f"OUT OF MEMORY at {batch}"
        else:
          best = (batch, memory.total)
          batch *= 2
      rows.append(SweepRow(remat, int(fsdp), best and best[0], best and best[1], stop))
  return rows


def sweep_table(rows: Sequence[SweepRow], devices: Sequence[Any], hbm: float,
                mesh: Mapping[str, int]) -> str:
  lines = [f"largest global batch that fits {hbm:g} GiB per device on {devices[0].device_kind} "
           f"x {len(devices)} (compile-only; batch doubled until the first OUT OF MEMORY):",
           f"  {'remat':<14}{'fsdp':>5}{'batch':>8}{'per shard':>10}{'GiB':>8}   stopped by"]
  for r in rows:
    shards = len(devices) // max(mesh.get("model", 1), 1)
    per = f"{r.batch // shards}" if r.batch else "-"
    gib = f"{r.total / GIB:.2f}" if r.total else "-"
    lines.append(f"  {r.remat:<14}{r.fsdp:>5}{r.batch or 'none':>8}{per:>10}{gib:>8}   {r.stop}")
  return "\n".join(lines)


def _sweep_main(f: Any, config: ml_collections.ConfigDict, devices: Sequence[Any],
                hbm: Optional[float]) -> None:
  if hbm is None:
    raise ValueError(f"--sweep needs a memory limit: no HBM size is known for "
                     f"{devices[0].device_kind}; pass --hbm_gib.")
  remats = f.sweep_remat or [config.student.get("remat", "none")]
  fsdps = [int(x) for x in (f.sweep_fsdp or [config.mesh.get("fsdp", 1)])]
  for remat in remats:
    layers.block_class(remat)  # an unknown policy: one error line before any compile
  print(f"sweeping remat {remats} x fsdp {fsdps} on {devices[0].device_kind} x {len(devices)}, "
        f"batch from {config.batch_size} doubling up to {f.sweep_max_batch}", flush=True)
  rows = sweep(config, devices, hbm, remats=remats, fsdps=fsdps, max_batch=f.sweep_max_batch,
               log=lambda line: print(line, flush=True))
  print(sweep_table(rows, devices, hbm, dict(config.mesh)), flush=True)


def _recommend_main(f: Any, config: ml_collections.ConfigDict, devices: Sequence[Any],
                    hbm: Optional[float]) -> None:
  """--recommend: compile candidate settings for the config's global batch and rank them
  (mim_jax/recommend.py)."""
  if hbm is None:
    raise ValueError(f"--recommend needs a memory limit: no HBM size is known for "
                     f"{devices[0].device_kind}; pass --hbm_gib.")
  chip_name = f.chip or _GENERATION_OF_KIND.get(devices[0].device_kind)
  if chip_name not in chips.CHIPS:
    raise ValueError(f"--recommend times steps on a chip: pass --chip, one of "
                     f"{sorted(chips.CHIPS)} (got {chip_name!r}).")
  c = config
  remats = f.recommend_remat or ["none", "dots", "full"]
  for remat in remats:
    layers.block_class(remat)  # an unknown policy: one error line before any compile
  fsdps = [int(x) for x in (f.recommend_fsdp or sorted({1, min(16, len(devices))}))]
  accumulates = [int(x) for x in f.recommend_accumulate]
  scans = ([x.lower() == "true" for x in f.recommend_scan] if f.recommend_scan
           else [bool(c.student.get("scan", False))])
  print(f"recommending for global batch {c.batch_size} on {devices[0].device_kind} x "
        f"{len(devices)}: remat {remats} x fsdp {fsdps} x micro-batches {accumulates} x scan "
        f"{scans}, at most {f.recommend_max_compiles} compiles", flush=True)

  def compile_fn(config, devs):
    result = compile_step(config, devs)
    return result.memory, step_cost(result)[0]
  ranked = recommend.recommend(c, devices, hbm, chips.CHIPS[chip_name], remats=remats,
                               fsdps=fsdps, accumulates=accumulates, scans=scans,
                               max_compiles=f.recommend_max_compiles, compile_fn=compile_fn,
                               log=lambda line: print(line, flush=True))
  print(recommend.table(ranked, c, devices, hbm, chips.CHIPS[chip_name]), flush=True)


# --------------------------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------------------------
def _main(argv: Sequence[str]) -> None:
  del argv
  from absl import flags  # pylint: disable=import-outside-toplevel
  f = flags.FLAGS
  try:
    devices = (cpu_devices(f.devices) if f.platform == "cpu" else tpu_devices(f.topology))
    hbm = f.hbm_gib if f.hbm_gib is not None else hbm_gib(devices)
    config = demo.resolve_teachers(f.config)  # as `main` does: the demo's teacher by its path
    if f.sweep:
      _sweep_main(f, config, devices, hbm)
      return
    if f.recommend:
      _recommend_main(f, config, devices, hbm)
      return
    print(describe(config, devices), flush=True)
    result = compile_step(config, devices)
  except (ImportError, ValueError, FileNotFoundError) as e:  # bad input: one line, status 2
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except CompilerOutOfMemory as e:
    limit = f"{hbm:g} GiB" if hbm else "the memory"
    mesh = dict(zip(sharding_lib.MESH_AXES, sharding_lib.mesh_shape(dict(f.config.mesh),
                                                                    len(devices))))
    advice = "\n".join(f"  {lever}" for lever in levers(f.config, mesh))
    print(f"{devices[0].device_kind} x {len(devices)} devices\n\nOUT OF MEMORY: the compiler could "
          f"not fit the step into {limit} per device:\n{str(e)[:2000]}\n\nLevers:\n{advice}",
          flush=True)
    sys.exit(1)
  if f.save_hlo:
    save_hlo(result, f.save_hlo)
  text, fits = report(result, devices, hbm, breakdown=f.top if f.breakdown else 0)
  print(text, flush=True)
  if not fits:
    sys.exit(1)  # OUT OF MEMORY


def run() -> None:
  from absl import app, flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  config_flags.DEFINE_config_file("config", None, "Experiment config file[:arg].",
                                  lock_config=True)
  flags.DEFINE_enum("platform", "tpu", ["tpu", "cpu"], "Compile for a TPU topology or for CPU.")
  flags.DEFINE_string("topology", "v5e:16x16", "TPU slice, <generation>:<chips per axis>.")
  flags.DEFINE_integer("devices", 8, "--platform cpu: number of simulated CPU devices.")
  flags.DEFINE_float("hbm_gib", None, "Memory per device to check against (default: the "
                     f"chip's HBM, {HBM_GIB}).")
  flags.DEFINE_bool("sweep", False, "Print the largest global batch that fits per remat policy "
                    "and fsdp value (the batch doubles from --config.batch_size).")
  flags.DEFINE_list("sweep_remat", None, "--sweep: remat policies (default: the config's).")
  flags.DEFINE_list("sweep_fsdp", None, "--sweep: fsdp values (default: the config's).")
  flags.DEFINE_integer("sweep_max_batch", 65536, "--sweep: the largest global batch tried.")
  flags.DEFINE_bool("recommend", False, "Rank settings for the config's global batch on this "
                    "slice: remat, fsdp, micro-batches per step (images per chip) and scan, each "
                    "candidate compiled, by predicted images/s per chip within HBM.")
  flags.DEFINE_list("recommend_remat", None, "--recommend: remat policies (default none, dots, "
                    "full).")
  flags.DEFINE_list("recommend_fsdp", None, "--recommend: fsdp values (default 1 and "
                    "min(16, devices)).")
  flags.DEFINE_list("recommend_accumulate", ["1", "2", "4", "8"], "--recommend: micro-batches "
                    "per step (optim.accumulate_steps).")
  flags.DEFINE_list("recommend_scan", None, "--recommend: student.scan values (default the "
                    "config's).")
  flags.DEFINE_integer("recommend_max_compiles", 8, "--recommend: the most candidates compiled.")
  flags.DEFINE_string("chip", None, "--recommend: the chip whose roofline times the candidates "
                      "(default the topology's generation).")
  flags.DEFINE_bool("breakdown", False, "Also print where the step's FLOPs and HBM bytes go: "
                    "totals per origin (teacher forward, student forward, backward, optimizer, "
                    "collectives, input) and the costliest instructions of the compiled module.")
  flags.DEFINE_integer("top", 15, "--breakdown: how many instructions to list.")
  flags.DEFINE_string("save_hlo", None, "Write the compiled step's HLO text to this path (and "
                      "XLA's cost and memory analysis to <path>.json) for `python -m "
                      "mim_jax.hlo_cost <path>` to read again without compiling.")
  flags.mark_flags_as_required(["config"])
  app.run(_main)


if __name__ == "__main__":
  run()
