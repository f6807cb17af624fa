r"""Soak: a long demo run, watched from outside for what drifts.

  python -m mim_jax.tools.soak --out /tmp/soak [--steps 3000] [--resume-at 0.5]

Runs `python -m mim_jax.main --config configs/demo.py` (the demo's MaskAlign pretraining, its
teacher the demo's cached one; `--config` another, e.g. `configs/demo.py:runlocal=True`) for
`--steps` steps with checkpoints every `--checkpoint-every` steps and the kNN evaluation every
`--eval-every`, stopped by SIGTERM at `--resume-at` of the steps (the run saves a checkpoint and
exits) and started again, which resumes it: two processes, two phases. Every `--every` seconds
it reads the running process's resident memory (RSS), open file descriptors and threads from
/proc/<pid>; the step time is the run's own (1 / the `perf/steps_per_s` of each record in
metrics.jsonl, the wall time between log points).

Drift, per phase: the first `--warmup` of its steps (compilation, caches filling) are left out,
the rest is cut in quarters, and the median of the first quarter is compared with the median of
the last (growth in %). It prints a table and writes it to <out>/soak.json; exit status 1 when
the RSS grows by more than `--max-rss-growth` % in a phase. soak.json also holds every sample.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from importlib import metadata
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs", "demo.py")
METRICS = ("rss_mib", "fds", "threads", "step_ms")


@dataclasses.dataclass(frozen=True)
class Sample:
  """One look at the training process: at `step` (the last logged one), its RSS, fds, threads."""
  step: int
  rss_mib: float
  fds: int
  threads: int


def command(config: str, workdir: str, steps: int, checkpoint_every: int, eval_every: int,
            log_every: int) -> list[str]:
  return [sys.executable, "-m", "mim_jax.main", "--config", config, "--workdir", workdir,
          f"--config.total_steps={steps}", f"--config.checkpoint_every={checkpoint_every}",
          f"--config.eval.every={eval_every}", f"--config.log_every={log_every}"]


def look(pid: int) -> Optional[tuple[float, int, int]]:
  """(RSS in MiB, open fds, threads) of process `pid` from /proc; None once it has gone."""
  try:
    with open(f"/proc/{pid}/status") as f:
      fields = dict(line.split(":", 1) for line in f if ":" in line)
    fds = len(os.listdir(f"/proc/{pid}/fd"))
  except (FileNotFoundError, ProcessLookupError):
    return None
  if "VmRSS" not in fields:  # a zombie: exited, not yet reaped
    return None
  return int(fields["VmRSS"].split()[0]) / 1024, fds, int(fields["Threads"])


def records(workdir: str) -> list[dict]:
  """metrics.jsonl's complete lines (the last one may be half written)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  out = []
  with open(path) as f:
    for line in f:
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError:
        pass
  return out


def watch(cmd: list[str], workdir: str, env: dict, every: float, stop_at: Optional[int],
          log) -> tuple[list[Sample], int]:
  """Runs `cmd`, sampling it every `every` s until it exits; SIGTERM once it has logged step
  `stop_at`. Returns the samples and its exit status."""
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
  samples, step, stopped = [], 0, False
  while proc.poll() is None:
    seen = look(proc.pid)
    done = records(workdir)
    step = max([step] + [r["step"] for r in done if "step" in r])
    if seen is not None:
      samples.append(Sample(step, *seen))
    if stop_at is not None and step >= stop_at and not stopped:
      proc.send_signal(signal.SIGTERM)
      stopped = True
    time.sleep(every)
  return samples, proc.returncode


def step_times(workdir: str) -> list[tuple[int, float]]:
  """(step, ms per step over the interval that ends there) of each record that has one."""
  return [(r["step"], 1000.0 / r["perf/steps_per_s"]) for r in records(workdir)
          if r.get("perf/steps_per_s")]


def drift(points: list[tuple[int, float]], first: int, last: int, warmup: float
          ) -> Optional[dict[str, float]]:
  """Median of the first and the last quarter of `points` (step, value) with step in
  (first + warmup * (last - first), last], and the growth between them in %."""
  begin = first + warmup * (last - first)
  values = [v for s, v in sorted(points) if begin < s <= last]
  q = len(values) // 4
  if q == 0:
    return None
  a, b = statistics.median(values[:q]), statistics.median(values[-q:])
  return {"first_quarter": a, "last_quarter": b,
          "growth_pct": 100.0 * (b - a) / a if a else float("nan"), "points": len(values)}


def phase_drift(samples: list[Sample], times: list[tuple[int, float]], first: int, last: int,
                warmup: float) -> dict[str, Optional[dict[str, float]]]:
  """Drift of each measure over one process; its samples after the last step (the final
  checkpoint and evaluation, the exit) are left out: they are not the steady state."""
  training = [s for s in samples if s.step < last]
  out = {m: drift([(s.step, float(getattr(s, m))) for s in training], first, last, warmup)
         for m in METRICS if m != "step_ms"}
  out["step_ms"] = drift(times, first, last, warmup)
  return out


def table(phases: list[dict]) -> str:
  lines = ["| phase | steps | measure | first quarter | last quarter | growth | points |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
  for p in phases:
    for m in METRICS:
      d = p["drift"][m]
      cells = (["-"] * 4 if d is None else
               [f"{d['first_quarter']:.1f}", f"{d['last_quarter']:.1f}",
                f"{d['growth_pct']:+.2f}%", str(d["points"])])
      lines.append(f"| {p['name']} | {p['first']}-{p['last']} | {m} | " + " | ".join(cells)
                   + " |")
  return "\n".join(lines)


def versions() -> dict[str, str]:
  """The installed versions of what the run's speed and memory depend on."""
  out = {}
  for name in ("jax", "jaxlib", "flax", "orbax-checkpoint", "tensorflow-cpu", "tensorflow"):
    try:
      out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      pass
  return out


def main(argv: Optional[list[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True, help="directory for the workdir, log, soak.json")
  parser.add_argument("--config", default=CONFIG, help="config file[:arguments]")
  parser.add_argument("--steps", type=int, default=3000)
  parser.add_argument("--resume-at", type=float, default=0.5, help="fraction of the steps")
  parser.add_argument("--checkpoint-every", type=int, default=100)
  parser.add_argument("--eval-every", type=int, default=500)
  parser.add_argument("--log-every", type=int, default=10)
  parser.add_argument("--every", type=float, default=1.0, help="seconds between samples")
  parser.add_argument("--warmup", type=float, default=0.2, help="fraction of a phase left out")
  parser.add_argument("--max-rss-growth", type=float, default=5.0, help="%% per phase")
  args = parser.parse_args(argv)

  workdir = os.path.join(args.out, "workdir")
  if os.path.exists(workdir):
    print(f"error: {workdir} exists; pass an --out without a previous soak.", file=sys.stderr)
    return 2
  os.makedirs(args.out, exist_ok=True)
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
  cmd = command(args.config, workdir, args.steps, args.checkpoint_every, args.eval_every,
                args.log_every)
  middle = int(args.steps * args.resume_at)
  phases, started = [], time.time()
  with open(os.path.join(args.out, "soak.log"), "w") as log:
    for name, stop_at in (("before resume", middle), ("after resume", None)):
      first = phases[-1]["last"] if phases else 0
      samples, rc = watch(cmd, workdir, env, args.every, stop_at, log)
      last = max([first] + [r["step"] for r in records(workdir) if "step" in r])
      times = [(s, t) for s, t in step_times(workdir) if first < s <= last]
      phases.append(dict(name=name, first=first, last=last, exit_status=rc,
                         samples=[dataclasses.astuple(s) for s in samples],
                         drift=phase_drift(samples, times, first, last, args.warmup)))
      if rc != 0 or last <= first:
        print(f"error: the {name} run ended with exit status {rc} at step {last}; see "
              f"{log.name}.", file=sys.stderr)
        return 1
  report = dict(command=" ".join(cmd), steps=args.steps, wall_s=time.time() - started,
                python=platform.python_version(), machine=platform.machine(),
                versions=versions(),
                cpus=os.cpu_count(), phases=phases,
                sample_fields=[f.name for f in dataclasses.fields(Sample)])
  with open(os.path.join(args.out, "soak.json"), "w") as f:
    json.dump(report, f, indent=1)
  print(table(phases))
  print(f"{args.steps} steps in {report['wall_s']:.0f} s; resumed at step {phases[0]['last']}")
  growth = [p["drift"]["rss_mib"]["growth_pct"] for p in phases if p["drift"]["rss_mib"]]
  if any(g > args.max_rss_growth for g in growth):
    print(f"error: host RSS grew by more than {args.max_rss_growth}% after warm-up.",
          file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
