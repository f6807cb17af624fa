"""Where the CPU MaskAlign step's time goes, from XLA's per-thunk trace.

  python benchmarks/step_profile.py [--precision float32] [--steps 2] [--top 25]

Runs the step of benchmarks/step_speed.py (ViT-B/16 + CLIP-B/16, batch 8, one CPU device) under
`jax.profiler.trace` with XLA:CPU's per-thunk trace events on, then prints from the trace:
  - thunk time per step by kind (`ynn_fusion` = library dots, the rest XLA's own fusions and
    copies), summed over the executor's threads;
  - how much of the step two threads were busy at once (XLA runs independent thunks
    concurrently; a multithreaded dot then shares the cores);
  - each dot shape's thunk time and GFLOP/s (from the compiled HLO);
  - the costliest other thunks with the op that made them.
The trace lands in --trace_dir (perfetto JSON) for a closer look.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys

# Per-thunk trace events must be switched on before XLA initialises.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_cpu_enable_xprof_traceme=true").strip()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.step_speed import make_step  # noqa: E402
from mim_jax import sharding  # noqa: E402

_SKIP = ("ThunkExecutor", "$", "SlinkyThreadPool", "PjitFunction")


def thunk_events(trace_dir: str) -> list[dict]:
  path = sorted(glob.glob(os.path.join(trace_dir, "plugins/profile/*/perfetto_trace.json.gz")))[-1]
  events = json.load(gzip.open(path))["traceEvents"]
  return [e for e in events if e.get("ph") == "X" and not e["name"].startswith(_SKIP)]


def _union(intervals):
  out = []
  for s, t in sorted(intervals):
    if out and s <= out[-1][1]:
      out[-1][1] = max(out[-1][1], t)
    else:
      out.append([s, t])
  return out


def _overlap(a, b) -> float:
  i = j = 0
  total = 0.0
  while i < len(a) and j < len(b):
    total += max(0.0, min(a[i][1], b[j][1]) - max(a[i][0], b[j][0]))
    if a[i][1] < b[j][1]:
      i += 1
    else:
      j += 1
  return total


def dot_shapes(hlo: str) -> dict[str, tuple[str, float]]:
  """Thunk name -> (its dot's output shape and contraction, FLOPs) for every dot in the HLO
  (a `ynn_fusion` calls a computation holding one; a plain `dot` is its own thunk)."""
  comps = {m.group(1): m.group(2) for m in re.finditer(
      r"^(?:ENTRY )?%?([\w.\-]+) \(.*?\) -> .*? \{\n(.*?)\n\}", hlo, re.M | re.S)}
  out = {}
  for line in hlo.splitlines():
    m = re.match(r"\s*(?:ROOT )?%((?:ynn_fusion|dot)[\w.]*) = ", line)
    if not m:
      continue
    call = re.search(r"calls=%([\w.\-]+)", line)
    body = comps.get(call.group(1), "") if call else line
    shapes = dict(re.findall(r"%([\w.\-]+) = (\w+\[[\d,]*\])", body))
    d = re.search(r"= (\w+\[[\d,]*\])\S* dot\(%([\w.\-]+), .*?lhs_contracting_dims=\{([\d,]*)\}",
                  body)
    if not d:
      continue
    dims = lambda s: [int(x) for x in re.findall(r"\d+", s.split("[", 1)[1])]
    lhs = dims(shapes.get(d.group(2), "x[]"))
    k = int(np.prod([lhs[int(i)] for i in d.group(3).split(",")])) if lhs else 0
    out[m.group(1)] = (f"{d.group(1)} k={k}", 2.0 * np.prod(dims(d.group(1))) * k)
  return out


def report(events: list[dict], hlo: str, steps: int, top: int) -> None:
  per_thunk = collections.defaultdict(float)
  by_kind = collections.defaultdict(float)
  by_thread = collections.defaultdict(list)
  for e in events:
    per_thunk[e["name"]] += e["dur"] / 1e3 / steps
    by_kind[re.sub(r"[._]\d+$", "", e["name"])] += e["dur"] / 1e3 / steps
    by_thread[e["tid"]].append((e["ts"], e["ts"] + e["dur"]))
  span = (max(t for v in by_thread.values() for _, t in v) -
          min(s for v in by_thread.values() for s, _ in v)) / 1e3 / steps
  busy = sorted((_union(v) for v in by_thread.values()), key=lambda u: -sum(t - s for s, t in u))
  both = _overlap(busy[0], busy[1]) / 1e3 / steps if len(busy) > 1 else 0.0
  print(f"traced step {span:.0f} ms; thunk time {sum(by_kind.values()):.0f} ms over "
        f"{len(by_thread)} threads; two threads busy at once for {both:.0f} ms")
  print("\nthunk time per step by kind:")
  for kind, ms in sorted(by_kind.items(), key=lambda x: -x[1])[:12]:
    print(f"  {ms:8.1f} ms  {kind}")

  dots = dot_shapes(hlo)
  shape_ms, shape_flops = collections.defaultdict(float), collections.defaultdict(float)
  for name, (shape, flops) in dots.items():
    shape_ms[shape] += per_thunk.get(name, 0.0)
    shape_flops[shape] += flops
  total_ms, total_flops = sum(shape_ms.values()), sum(shape_flops.values())
  print(f"\ndots: {total_flops / 1e9:.0f} GFLOP in {total_ms:.0f} ms of thunk time = "
        f"{total_flops / 1e6 / max(total_ms, 1e-9):.0f} GFLOP/s (plain `dot` thunks may run "
        "asynchronously: their times undercount)")
  for shape, ms in sorted(shape_ms.items(), key=lambda x: -x[1])[:top]:
    print(f"  {ms:8.1f} ms  {shape_flops[shape] / 1e9:6.1f} GFLOP  "
          f"{shape_flops[shape] / 1e6 / max(ms, 1e-9):6.0f} GFLOP/s  {shape}")

  ops = {}  # thunk name -> (shape, the op that made it; XLA's layout copies name none)
  for m in re.finditer(r"^\s*%([\w.\-]+) = (\w+\[[\d,]*\])(.*)$", hlo, re.M):
    op = re.search(r'op_name="([^"]+)"', m.group(3))
    ops[m.group(1)] = (m.group(2), re.sub(r"block\d+", "blockN", op.group(1)) if op else "-")
  other = collections.defaultdict(lambda: [0.0, 0])
  for name, ms in per_thunk.items():
    if name in dots:
      continue
    shape, op = ops.get(name, ("?", "?"))
    key = (re.sub(r"[._]\d+$", "", name), shape, op.replace("jit(<lambda>)/", "")[-90:])
    other[key][0] += ms
    other[key][1] += 1
  print("\ncostliest other thunks (summed over blocks):")
  for (kind, shape, op), (ms, n) in sorted(other.items(), key=lambda x: -x[1][0])[:top]:
    print(f"  {ms:8.1f} ms {n:4d}x  {kind:26s} {shape:22s} {op}")


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--precision", default="float32")
  parser.add_argument("--steps", type=int, default=2)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--top", type=int, default=25)
  parser.add_argument("--trace_dir", default="/tmp/mim_jax_step_trace")
  args = parser.parse_args()
  setup, fn, state, t_params, batch = make_step(args.precision, args.batch)
  for _ in range(2):  # compile and warm up
    state, metrics = fn(state, t_params, batch)
    jax.block_until_ready(metrics)
  with jax.profiler.trace(args.trace_dir, create_perfetto_trace=True):
    for _ in range(args.steps):
      state, metrics = fn(state, t_params, batch)
      jax.block_until_ready(metrics)
  with jax.set_mesh(setup.mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    hlo = fn.jitted.lower(state, t_params, batch).compile().as_text()
  print(f"{args.precision}, batch {args.batch}, {args.steps} traced steps, trace in "
        f"{args.trace_dir}")
  report(thunk_events(args.trace_dir), hlo, args.steps, args.top)


if __name__ == "__main__":
  main()
