r"""Runs (or prints) one training per point of a sweep file.

  python launch/sweep.py --config configs/maskalign_b16_clip_b16.py \
      --sweep configs/sweeps/maskalign_top_k.py --workdir runs/topk [--print | --run] \
      [-- extra args for every run, e.g. --config.batch_size=512]

A sweep file defines `sweep() -> list[dict[str, Any]]`, each dict a point of dotted config
overrides (`{"mask.ratio": 0.5}`). Every point becomes

  python -m mim_jax.main --config <config> --workdir <workdir>/<name> --config.<key>=<value> ...

where <name> is made from the point's overrides: `key=value` for each key whose value differs
between points (the last part of the dotted key, the whole key where two would clash), joined
by commas, e.g. `alignment=layerwise,top_k=5`. Names are checked to be unique and safe as
directory names.

--print (the default) writes one shell-quoted command per line, for a cluster's job array.
--run runs them here one after another; a failed run does not stop the others, and the exit
status is 1 if any failed. Before either, every override key is checked against the config (a
misspelt key fails here, naming the closest valid one, rather than on the cluster).
"""
from __future__ import annotations

import argparse
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
  """Every override key must be a field (or a sub-config) of the config."""
  config = config_file.load(config_spec)
  keys = {k for p in points for k in p}
  valid = set(config_lib.flat_keys(config))
  prefixes = {v.rsplit(".", i)[0] for v in valid for i in range(1, v.count(".") + 1)}
  config_file.check_keys(config, sorted(keys - prefixes))


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


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  extra = argv[argv.index("--") + 1:] if "--" in argv else []
  argv = argv[:argv.index("--")] if "--" in argv else argv
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", required=True, help="experiment config path[:arg]")
  parser.add_argument("--sweep", required=True, help="sweep file with sweep()")
  parser.add_argument("--workdir", required=True, help="parent of the runs' workdirs")
  mode = parser.add_mutually_exclusive_group()
  mode.add_argument("--print", dest="mode", action="store_const", const="print",
                    help="print one command per point (default)")
  mode.add_argument("--run", dest="mode", action="store_const", const="run",
                    help="run the points here, one after another")
  parser.add_argument("--no_check", action="store_true",
                      help="skip checking the override keys against the config")
  args = parser.parse_args(argv)
  points = load_sweep(args.sweep)
  if not args.no_check:
    check_points(args.config, points)
  if args.mode == "run":
    return 1 if run_all(commands(args.config, points, args.workdir, python=sys.executable,
                                 extra=extra)) else 0
  for cmd in commands(args.config, points, args.workdir, extra=extra):
    print(shlex.join(cmd))
  return 0


if __name__ == "__main__":
  sys.exit(main())
