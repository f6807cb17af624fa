r"""Runs (or prints) one training per point of a sweep file, and summarises the runs beside the
paper's numbers.

  python launch/sweep.py --sweep configs/sweeps/maskalign_top_k.py --workdir runs/topk \
      [--config configs/maskalign_b16_clip_b16.py] [--print | --run | --summarize] \
      [-- extra args for every run, e.g. --config.batch_size=512]

A sweep file defines `sweep() -> list[dict[str, Any]]`, each dict a point of dotted config
overrides (`{"mask.ratio": 0.5}`), and optionally `CONFIG` (the experiment config the points
override; --config replaces it), `METRIC` (what the paper reports, e.g. "ImageNet-1k fine-tune
top-1 (%)") and `paper() -> list[float | None]`, the paper's number for each point (None where
it has none). Every point becomes

  python -m mim_jax.main --config <config> --workdir <workdir>/<name> --config.<key>=<value> ...

where <name> is made from the point's overrides: `key=value` for each key whose value differs
between points (the last part of the dotted key, the whole key where two would clash), joined
by commas, e.g. `alignment=layerwise,top_k=5`. Names are checked to be unique and safe as
directory names.

--print (the default) writes one shell-quoted command per line, for a cluster's job array.
--run runs them here one after another; a failed run does not stop the others, and the exit
status is 1 if any failed. Before either, every override key is checked against the config (a
misspelt key fails here, naming the closest valid one, rather than on the cluster).
--summarize reads each run's `metrics.jsonl` (and `<run>/finetune/metrics.jsonl` if a fine-tune
wrote one) and prints a markdown table of each row's final loss, kNN top-1 and fine-tune top-1
(those present) beside the paper's number; it also writes `summary.md` and `summary.png` in the
sweep's workdir. A run not started (or without metrics) is a row of "-".
"""
from __future__ import annotations

import argparse
import math
import os
import re
import shlex
import subprocess
import sys
from typing import Any, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a script: make `mim_jax` and `configs` importable
  sys.path.insert(0, ROOT)

from mim_jax import config as config_lib  # noqa: E402  pylint: disable=wrong-import-position
from mim_jax import plots  # noqa: E402  pylint: disable=wrong-import-position
from mim_jax.tools import config_file  # noqa: E402  pylint: disable=wrong-import-position

Point = dict[str, Any]
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


def load_sweep(path: str) -> list[Point]:
  """The points of a sweep file, checked to be non-empty lists of dotted-key dicts."""
  module = config_file.load_module(path)
  if not hasattr(module, "sweep"):
    raise ValueError(f"{path} has no sweep() function.")
  points = list(module.sweep())
  if not points or not all(isinstance(p, dict) and p for p in points):
    raise ValueError(f"{path}: sweep() must return a non-empty list of non-empty dicts.")
  return points


def load_paper(path: str) -> tuple[str, list[Optional[float]]]:
  """(what the paper reports, its number per point) of a sweep file; ("", [None, ...]) when the
  file gives none."""
  module = config_file.load_module(path)
  n = len(load_sweep(path))
  if not hasattr(module, "paper"):
    return getattr(module, "METRIC", ""), [None] * n
  values = list(module.paper())
  if len(values) != n:
    raise ValueError(f"{path}: paper() has {len(values)} numbers for {n} points.")
  return getattr(module, "METRIC", "paper"), values


def sweep_config(path: str, config: Optional[str]) -> str:
  """--config, else the sweep file's CONFIG (relative to the repository root)."""
  if config:
    return config
  default = getattr(config_file.load_module(path), "CONFIG", None)
  if not default:
    raise ValueError(f"{path} names no CONFIG: pass --config.")
  return os.path.relpath(os.path.join(ROOT, default))


def format_value(value: Any) -> str:
  """A value as `--config.key=` takes it (ml_collections parses it by the field's type)."""
  if isinstance(value, (list, tuple)):
    return "(" + ", ".join(format_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return str(value)


def _name_value(value: Any) -> str:
  if isinstance(value, (list, tuple)):
    return "-".join(_name_value(v) for v in value) or "none"
  return _UNSAFE.sub("_", str(value))


def run_names(points: Sequence[Point]) -> list[str]:
  """One directory name per point, from the overrides that vary across the sweep."""
  keys = list(dict.fromkeys(k for p in points for k in p))
  varying = [k for k in keys if len({repr(p.get(k, "<unset>")) for p in points}) > 1]
  shown = varying or keys  # a single point: name it by all its overrides
  last = [k.rsplit(".", 1)[-1] for k in shown]
  labels = {k: (short if last.count(short) == 1 else k) for k, short in zip(shown, last)}
  names = [",".join(f"{labels[k]}={_name_value(p[k])}" for k in shown if k in p) or "default"
           for p in points]
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise ValueError(f"Sweep points share the run names {duplicates}: every point needs "
                     "distinct overrides.")
  return names


def commands(config: str, points: Sequence[Point], workdir: str, *, python: str = "python",
             extra: Sequence[str] = ()) -> list[list[str]]:
  """The argv of every run, in sweep order."""
  out = []
  for name, point in zip(run_names(points), points):
    argv = [python, "-m", "mim_jax.main", "--config", config,
            "--workdir", os.path.join(workdir, name)]
    argv += [f"--config.{k}={format_value(v)}" for k, v in point.items()]
    out.append(argv + list(extra))
  return out


def check_points(config_spec: str, points: Sequence[Point]) -> None:
  """Every override key must be a field (or a sub-config) of the config, and every value of a
  type that field takes (ml_collections' own check, as --config.key=value gets)."""
  config = config_file.load(config_spec)
  keys = {k for p in points for k in p}
  valid = set(config_lib.flat_keys(config))
  prefixes = {v.rsplit(".", i)[0] for v in valid for i in range(1, v.count(".") + 1)}
  config_file.check_keys(config, sorted(keys - prefixes))
  for point in points:
    trial = config_file.load(config_spec)
    for key, value in point.items():
      parent, _, leaf = key.rpartition(".")
      node = config_file.get_dotted(trial, parent) if parent else trial
      try:
        node[leaf] = value
      except TypeError as e:
        raise TypeError(f"{key}={value!r}: {e}") from None


def run_all(argvs: Sequence[Sequence[str]]) -> int:
  """Runs the commands one after another; returns how many failed."""
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
  failed = []
  for i, argv in enumerate(argvs):
    print(f"[{i + 1}/{len(argvs)}] {shlex.join(argv)}", flush=True)
    if subprocess.run(list(argv), env=env, check=False).returncode:
      failed.append(shlex.join(argv))
  for cmd in failed:
    print(f"FAILED: {cmd}", file=sys.stderr)
  return len(failed)


# (column title, metrics key, file under the run's workdir)
COLUMNS = (("final loss", "loss", "metrics.jsonl"), ("kNN top-1", "knn/top1", "metrics.jsonl"),
           ("fine-tune top-1", "finetune/top1", os.path.join("finetune", "metrics.jsonl")))


def final_metrics(run_dir: str) -> dict[str, float]:
  """The last value of each COLUMNS key the run wrote (a resumed run's repeats count once)."""
  out = {}
  for _, key, name in COLUMNS:
    path = os.path.join(run_dir, name)
    if os.path.isfile(path):
      steps, values = plots.series(plots.read_rows(path), key)
      if len(steps):
        out[key] = float(values[-1])
  return out


def _cell(value: Optional[float], percent: bool = False) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "-"
  return f"{100 * value:.1f}" if percent else f"{value:.4g}"


def summary_table(names: Sequence[str], results: Sequence[dict[str, float]], metric: str,
                  paper: Sequence[Optional[float]]) -> str:
  """Markdown: one row per run, the columns any run has, then the paper's number."""
  shown = [(title, key) for title, key, _ in COLUMNS if any(key in r for r in results)]
  head = ["run"] + [t + (" (%)" if k != "loss" else "") for t, k in shown] + [
      f"paper: {metric}" if metric else "paper"]
  lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
  for name, result, number in zip(names, results, paper):
    cells = [_cell(result.get(k), percent=k != "loss") for _, k in shown]
    lines.append("| " + " | ".join([name] + cells + [_cell(number)]) + " |")
  return "\n".join(lines) + "\n"


def summarize(sweep_path: str, workdir: str) -> str:
  """Prints the sweep's table and writes summary.md and summary.png in `workdir`."""
  names = run_names(load_sweep(sweep_path))
  metric, paper = load_paper(sweep_path)
  if not any(os.path.isdir(os.path.join(workdir, n)) for n in names):
    raise FileNotFoundError(f"No run of {sweep_path} under {workdir}: run the sweep first "
                            "(--run, or the --print commands) or pass its --workdir.")
  results = [final_metrics(os.path.join(workdir, n)) for n in names]
  table = summary_table(names, results, metric, paper)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "summary.md"), "w") as f:
    f.write(f"Sweep {os.path.relpath(sweep_path, ROOT)} in {workdir}\n\n{table}")
  scale = lambda key, v: v if v is None or key == "loss" else 100 * v  # as the table shows it
  ours = {title + ("" if key == "loss" else " (%)"): [scale(key, r.get(key)) for r in results]
          for title, key, _ in COLUMNS}
  plots.plot_sweep(names, ours, paper, os.path.join(workdir, "summary.png"),
                   paper_label=f"paper: {metric}" if metric else "paper")
  print(table, end="")
  return table


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  extra = argv[argv.index("--") + 1:] if "--" in argv else []
  argv = argv[:argv.index("--")] if "--" in argv else argv
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", help="experiment config path[:arg] (default: the sweep "
                      "file's CONFIG)")
  parser.add_argument("--sweep", required=True, help="sweep file with sweep()")
  parser.add_argument("--workdir", required=True, help="parent of the runs' workdirs")
  mode = parser.add_mutually_exclusive_group()
  mode.add_argument("--print", dest="mode", action="store_const", const="print",
                    help="print one command per point (default)")
  mode.add_argument("--run", dest="mode", action="store_const", const="run",
                    help="run the points here, one after another")
  mode.add_argument("--summarize", dest="mode", action="store_const", const="summarize",
                    help="table (markdown + PNG) of the runs' final metrics beside the paper's")
  parser.add_argument("--no_check", action="store_true",
                      help="skip checking the override keys against the config")
  args = parser.parse_args(argv)
  points = load_sweep(args.sweep)
  if args.mode == "summarize":
    summarize(args.sweep, args.workdir)
    return 0
  config = sweep_config(args.sweep, args.config)
  if not args.no_check:
    check_points(config, points)
  if args.mode == "run":
    return 1 if run_all(commands(config, points, args.workdir, python=sys.executable,
                                 extra=extra)) else 0
  for cmd in commands(config, points, args.workdir, extra=extra):
    print(shlex.join(cmd))
  return 0


if __name__ == "__main__":
  try:
    sys.exit(main())
  except (ValueError, KeyError, TypeError, FileNotFoundError) as e:  # bad input: one line
    sys.exit(f"error: {e.args[0] if isinstance(e, KeyError) and e.args else e}")
