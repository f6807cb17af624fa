r"""Runs (or prints) a sweep file's rows, each a pretraining and then the evaluation that gives the
paper's number (a fine-tune or a linear probe from it), and summarises them beside the paper.

  python launch/sweep.py --sweep configs/sweeps/maskalign_top_k.py --workdir runs/topk \
      [--config configs/maskalign_b16_clip_b16.py] [--seeds 0,1,2] \
      [--print | --run | --summarize] [--only ROW] [--eval_args='--config.batch_size=512'] \
      [-- extra args for every pretraining, e.g. --config.batch_size=512]

A sweep file defines `sweep() -> list[dict[str, Any]]`, each dict a row of dotted config
overrides (`{"mask.ratio": 0.5}`), and:
  CONFIG      the experiment config the rows override (--config replaces it);
  METRIC      what the paper reports, e.g. "ImageNet-1k fine-tune top-1 (%)";
  EVALUATION  how a row gets that number (EVALUATIONS below): "finetune" or "probe" (pretraining,
              then a fine-tune / linear probe started from it: `init_from` = the row's workdir,
              in <row>/finetune or <row>/probe), "knn" or "loss" (pretraining only: its kNN
              top-1 or its loss), "run" (the row's run is itself the evaluation: a fine-tune
              config, e.g. of a CLIP checkpoint);
  RECIPE      for finetune / probe: the recipe of configs/finetune.py / configs/linear_probe.py
              (or `recipe(point) -> str` where rows need different ones); the variant follows the
              row's `student.variant` (else the --config's `variant=`), runlocal the --config's;
  EVAL_CONFIG optional: another evaluation config (it gets only `runlocal=True`, when the
              pretraining config has it);
  paper()     optional: the paper's number for each row (None where it has none);
  names()     optional: the rows' directory names (default: made from their overrides, below).
The row's `student.*` overrides that shape its parameters (not variant, drop_path, stage_skips)
go to the evaluation run too, a shared relative position bias as one table per block.

Every row becomes a workdir <workdir>/<name>, where <name> is made from the row's overrides:
`key=value` for each key whose value differs between rows (the last part of the dotted key, the
whole key where two would clash), joined by commas, e.g. `alignment=layerwise,top_k=5`. With
--seeds 0,1,2 every row runs once per seed, in <workdir>/<name>/seed<k> with --config.seed=k
(both stages).

--print (the default) writes one shell line per row (and seed) that runs its whole pipeline
(this script with --only and --run), for a cluster's job array. --run runs the rows here one
after another (--only ROW: that row alone). A stage is skipped when its last checkpoint is at its
last step (so a finished pretraining is not entered again); otherwise it runs and resumes from
its own checkpoints. The evaluation starts only after the pretraining has finished; a stage
stopped early (a signal, a preemption) ends its row, and the same command resumes it. A failed
row does not stop the others; the exit status is 1 if any row did not finish. Before either,
every override key is checked against the configs (a misspelt key fails here, naming the closest
valid one, rather than on the cluster).

--summarize reads what the runs wrote: each row's final pretraining loss (metrics.jsonl), kNN
top-1 (results.json, else metrics.jsonl) and its evaluation run's top-1 (results.json "final"
"eval/top1", what a fine-tune or probe writes), and prints a markdown table beside the paper's
number: with several seeds the mean ± the sample standard deviation over the finished runs, and
how many finished. It writes summary.md, summary.png (bars, spread as error bars) and
losses.png (each row's pretraining loss curve) in the sweep's workdir.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import shlex
import subprocess
import sys
from types import ModuleType
from typing import Any, NamedTuple, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a script: make `mim_jax` and `configs` importable
  sys.path.insert(0, ROOT)

from mim_jax import config as config_lib  # noqa: E402  pylint: disable=wrong-import-position
from mim_jax import plots  # noqa: E402  pylint: disable=wrong-import-position
from mim_jax.tools import config_file  # noqa: E402  pylint: disable=wrong-import-position

Point = dict[str, Any]
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")

# How a row gets the paper's number; the evaluation run's directory inside the row's workdir
# (None: no second run; "": the row's run itself).
EVALUATIONS = {"finetune": "finetune", "probe": "probe", "knn": None, "loss": None, "run": ""}
DEFAULT_EVAL_CONFIG = {"finetune": "configs/finetune.py", "probe": "configs/linear_probe.py"}
# Row overrides of the student that do not carry over to its evaluation run.
_NOT_FORWARDED = ("student.variant", "student.drop_path", "student.stage_skips")


# --------------------------------------------------------------------------------------------
# The sweep file.
# --------------------------------------------------------------------------------------------
class Sweep(NamedTuple):
  path: str
  module: ModuleType
  points: list[Point]
  names: list[str]
  metric: str
  evaluation: str
  paper: list[Optional[float]]


def load_sweep(path: str) -> list[Point]:
  """The rows of a sweep file, checked to be non-empty lists of dotted-key dicts."""
  return _points(config_file.load_module(path), path)


def _points(module: ModuleType, path: str) -> list[Point]:
  if not hasattr(module, "sweep"):
    raise ValueError(f"{path} has no sweep() function.")
  points = list(module.sweep())
  if not points or not all(isinstance(p, dict) and p for p in points):
    raise ValueError(f"{path}: sweep() must return a non-empty list of non-empty dicts.")
  return points


def load(path: str) -> Sweep:
  """The sweep file at `path`, checked: rows, EVALUATION, paper() of one number per row."""
  module = config_file.load_module(path)
  points = _points(module, path)
  evaluation = getattr(module, "EVALUATION", None)
  if evaluation not in EVALUATIONS:
    raise ValueError(f"{path}: EVALUATION = {evaluation!r}; set it to one of "
                     f"{', '.join(map(repr, EVALUATIONS))} (how a row gets the paper's number).")
  if evaluation in DEFAULT_EVAL_CONFIG and not (
      hasattr(module, "RECIPE") or hasattr(module, "recipe") or hasattr(module, "EVAL_CONFIG")):
    raise ValueError(f"{path}: EVALUATION = {evaluation!r} needs RECIPE (a recipe of "
                     f"{DEFAULT_EVAL_CONFIG[evaluation]}) or EVAL_CONFIG.")
  paper = list(module.paper()) if hasattr(module, "paper") else [None] * len(points)
  if len(paper) != len(points):
    raise ValueError(f"{path}: paper() has {len(paper)} numbers for {len(points)} rows.")
  names = given_names(module, path, len(points)) if hasattr(module, "names") else None
  return Sweep(path=path, module=module, points=points, names=names or run_names(points),
               metric=getattr(module, "METRIC", ""), evaluation=evaluation, paper=paper)


def load_paper(path: str) -> tuple[str, list[Optional[float]]]:
  """(what the paper reports, its number per row) of a sweep file."""
  sweep = load(path)
  return sweep.metric, sweep.paper


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
  """One directory name per row, from the overrides that vary across the sweep."""
  keys = list(dict.fromkeys(k for p in points for k in p))
  varying = [k for k in keys if len({repr(p.get(k, "<unset>")) for p in points}) > 1]
  shown = varying or keys  # a single row: name it by all its overrides
  last = [k.rsplit(".", 1)[-1] for k in shown]
  labels = {k: (short if last.count(short) == 1 else k) for k, short in zip(shown, last)}
  names = [",".join(f"{labels[k]}={_name_value(p[k])}" for k in shown if k in p) or "default"
           for p in points]
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise ValueError(f"Sweep rows share the run names {duplicates}: every row needs "
                     "distinct overrides.")
  return names


def given_names(module: ModuleType, path: str, n: int) -> list[str]:
  """A sweep file's own `names()`, checked: one per row, distinct, safe as directory names."""
  names = [str(x) for x in module.names()]
  bad = [x for x in names if not x or _UNSAFE.search(x.replace(",", "").replace("=", ""))]
  if len(names) != n or len(set(names)) != n or bad:
    raise ValueError(f"{path}: names() must give {n} distinct directory names of letters, "
                     f"digits and ._+-=, (got {names}).")
  return names


def spec_args(spec: str) -> dict[str, str]:
  """'configs/x.py:variant=L/16,runlocal=True' -> {"variant": "L/16", "runlocal": "True"}."""
  _, arg = config_file.split_spec(spec)
  return dict(item.partition("=")[::2] for item in (arg or "").split(",") if item)


def evaluation_config(sweep: Sweep, point: Point, config: str) -> Optional[str]:
  """The config spec of a row's evaluation run (None: the sweep has no second run)."""
  if EVALUATIONS[sweep.evaluation] in (None, ""):
    return None
  pre = spec_args(config)
  custom = getattr(sweep.module, "EVAL_CONFIG", None)
  args = {}
  if not custom:
    recipe = getattr(sweep.module, "recipe", None)
    args["recipe"] = recipe(point) if recipe else sweep.module.RECIPE
    variant = point.get("student.variant", pre.get("variant"))
    if variant:
      args["variant"] = variant
  if pre.get("runlocal") == "True":
    args["runlocal"] = "True"
  path = os.path.relpath(os.path.join(ROOT, custom or DEFAULT_EVAL_CONFIG[sweep.evaluation]))
  return path + (":" + ",".join(f"{k}={v}" for k, v in args.items()) if args else "")


def forwarded(point: Point) -> Point:
  """The row's student overrides its evaluation run needs to rebuild the same parameters."""
  out = {}
  for key, value in point.items():
    if key.startswith("student.") and key not in _NOT_FORWARDED:
      out[key] = "per_layer" if (key, value) == ("student.rel_pos", "shared") else value
  return out


# --------------------------------------------------------------------------------------------
# Pipelines: one per row and seed, one stage (pretraining) or two (then its evaluation).
# --------------------------------------------------------------------------------------------
class Stage(NamedTuple):
  kind: str  # "pretraining" | "finetune" | "probe" | "run"
  workdir: str
  argv: tuple[str, ...]


class Pipeline(NamedTuple):
  row: str
  seed: Optional[int]
  workdir: str
  stages: tuple[Stage, ...]

  @property
  def label(self) -> str:
    return self.row + ("" if self.seed is None else f" seed {self.seed}")


def _main_argv(python: str, config: str, workdir: str, overrides: Point,
               extra: Sequence[str]) -> tuple[str, ...]:
  return (python, "-m", "mim_jax.main", "--config", config, "--workdir", workdir,
          *[f"--config.{k}={format_value(v)}" for k, v in overrides.items()], *extra)


def pipelines(sweep: Sweep, config: str, workdir: str, *, seeds: Sequence[Optional[int]] = (None,),
              python: str = "python", extra: Sequence[str] = (),
              eval_extra: Sequence[str] = ()) -> list[Pipeline]:
  """Every row's pipeline, in sweep order, each seed after the other."""
  out = []
  for name, point in zip(sweep.names, sweep.points):
    for seed in seeds:
      row_dir = os.path.join(workdir, name, *([] if seed is None else [f"seed{seed}"]))
      seeded = {} if seed is None else {"seed": seed}
      kind = "run" if sweep.evaluation == "run" else "pretraining"
      stages = [Stage(kind, row_dir, _main_argv(python, config, row_dir, {**point, **seeded},
                                                extra))]
      eval_config = evaluation_config(sweep, point, config)
      if eval_config:
        eval_dir = os.path.join(row_dir, EVALUATIONS[sweep.evaluation])
        overrides = {"init_from": row_dir, **forwarded(point), **seeded}
        stages.append(Stage(sweep.evaluation, eval_dir,
                            _main_argv(python, eval_config, eval_dir, overrides, eval_extra)))
      out.append(Pipeline(name, seed, row_dir, tuple(stages)))
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


def check(sweep: Sweep, config: str) -> None:
  """The rows against their config, and each evaluation config with what it is given."""
  check_points(config, sweep.points)
  by_spec: dict[str, list[Point]] = {}
  for point in sweep.points:
    spec = evaluation_config(sweep, point, config)
    if spec:
      by_spec.setdefault(spec, []).append({"init_from": "", **forwarded(point)})
  for spec, points in by_spec.items():
    check_points(spec, points)


# --------------------------------------------------------------------------------------------
# Whether a stage has finished: its last checkpoint is at its last step.
# --------------------------------------------------------------------------------------------
def resolved_config(argv: Sequence[str]) -> Any:
  """The config `python -m mim_jax.main <argv>` trains (argv after the module name), parsed as
  main parses it."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  argv = ["main", *argv]
  values = flags.FlagValues()  # its overrides are read from `sys_argv`, not sys.argv
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True,
                                  sys_argv=argv)
  values(argv, known_only=True)
  return values.config


def total_steps(config: Any) -> int:
  """The run's last step (assembly.durations, with the dataset's size when it counts epochs)."""
  from mim_jax import assembly  # pylint: disable=import-outside-toplevel
  from mim_jax.data import input_pipeline  # pylint: disable=import-outside-toplevel
  examples = input_pipeline.num_examples(config.data) if config.get("total_steps") is None else 1
  return assembly.durations(config, examples)[0]


def last_step(workdir: str) -> Optional[int]:
  from mim_jax import init_from  # pylint: disable=import-outside-toplevel
  steps = init_from.saved_steps(workdir)
  return steps[-1] if steps else None


def finished_step(stage: Stage) -> Optional[int]:
  """The stage's last saved step when it is its last step (the config its argv trains), else
  None (the last step is only worked out when there is a checkpoint to compare it with)."""
  step = last_step(stage.workdir)
  if step is None or step < total_steps(resolved_config(stage.argv[3:])):
    return None
  return step


def _run(argv: Sequence[str]) -> int:
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
  return subprocess.run(list(argv), env=env, check=False).returncode


def run_pipeline(pipeline: Pipeline, log=print) -> bool:
  """Runs the stages not yet finished, in order; True when the last one has finished."""
  stages = list(pipeline.stages)
  if len(stages) > 1 and last_step(stages[-1].workdir) is not None:
    # the evaluation started from the pretraining's final checkpoint: that one is done
    log(f"  {stages[0].kind}: done (the {stages[-1].kind} started from it)")
    stages = stages[1:]
  for stage in stages:
    step = finished_step(stage)
    if step is not None:
      log(f"  {stage.kind}: done (step {step}, its last) in {stage.workdir}")
      continue
    step = last_step(stage.workdir)
    log(f"  {stage.kind}: {'resuming from step ' + str(step) if step else 'starting'}: "
        f"{shlex.join(stage.argv)}", flush=True)
    code = _run(stage.argv)
    if code or finished_step(stage) is None:
      why = f"exit status {code}" if code else f"stopped at step {last_step(stage.workdir)}"
      log(f"  {stage.kind}: not finished ({why}); the same command resumes it", flush=True)
      return False
  return True


def run_all(pipelines_: Sequence[Pipeline]) -> int:
  """Runs the pipelines one after another; returns how many did not finish."""
  failed = []
  for i, pipeline in enumerate(pipelines_):
    print(f"[{i + 1}/{len(pipelines_)}] {pipeline.label}", flush=True)
    if not run_pipeline(pipeline):
      failed.append(pipeline.label)
  for label in failed:
    print(f"NOT FINISHED: {label}", file=sys.stderr)
  return len(failed)


def print_lines(args: argparse.Namespace, pipelines_: Sequence[Pipeline],
                extra: Sequence[str]) -> list[str]:
  """One shell line per pipeline: this script running that row (and seed) alone."""
  script = os.path.relpath(os.path.abspath(__file__))
  lines = []
  for p in pipelines_:
    argv = ["python", script, "--sweep", args.sweep, "--workdir", args.workdir, "--only", p.row]
    argv += ["--config", args.config] if args.config else []
    argv += ["--seeds", str(p.seed)] if p.seed is not None else []
    argv += [f"--eval_args={args.eval_args}"] if args.eval_args else []  # one token: "--..."
    argv += ["--run"] + (["--", *extra] if extra else [])
    lines.append(shlex.join(argv))
  return lines


# --------------------------------------------------------------------------------------------
# The summary.
# --------------------------------------------------------------------------------------------
TOP1_TITLES = {"finetune": "fine-tune top-1", "probe": "linear probe top-1", "run": "top-1"}
# The summary's key of the number each evaluation gives.
OWN_KEY = {"finetune": "top1", "probe": "top1", "run": "top1", "knn": "knn", "loss": "loss"}


def seed_dirs(row_dir: str, seeds: Optional[Sequence[int]] = None) -> list[str]:
  """The run directories of a row: <row>/seed<k> for the seeds asked for or found, else the row's
  own directory."""
  if seeds:
    return [os.path.join(row_dir, f"seed{k}") for k in seeds]
  found = sorted((int(m.group(1)), e) for e in (os.listdir(row_dir) if os.path.isdir(row_dir)
                                                else []) for m in [re.fullmatch(r"seed(\d+)", e)]
                 if m and os.path.isdir(os.path.join(row_dir, e)))
  return [os.path.join(row_dir, e) for _, e in found] or [row_dir]


def _last(path: str, key: str) -> Optional[float]:
  """The value of `key` at the last step a metrics.jsonl logged it (a repeated step: its last)."""
  if not os.path.isfile(path):
    return None
  steps, values = plots.series(plots.read_rows(path), key)
  return float(values[-1]) if len(steps) else None


def _final(run_dir: str, key: str) -> Optional[float]:
  """results.json's "final" value of `key` (what the run's last evaluation measured)."""
  from mim_jax.evaluation import classification  # pylint: disable=import-outside-toplevel
  results = classification.read_results(run_dir) if os.path.isdir(run_dir) else None
  value = (results or {}).get("final", {}).get(key)
  return None if value is None else float(value)


def finished(run_dir: str) -> Optional[bool]:
  """Whether the run in `run_dir` saved its last step, from the config.json it wrote (None when
  that cannot be told, e.g. the dataset's size is not available here)."""
  import json  # pylint: disable=import-outside-toplevel
  import ml_collections  # pylint: disable=import-outside-toplevel
  step, path = last_step(run_dir), os.path.join(run_dir, "config.json")
  if step is None or not os.path.isfile(path):
    return False
  try:
    with open(path) as f:
      return step >= total_steps(ml_collections.ConfigDict(json.load(f)))
  except Exception:  # pylint: disable=broad-except  (a summary shows what it can)
    return None


def run_metrics(run_dir: str, evaluation: str) -> dict[str, Any]:
  """What one run (one seed of a row) wrote: "loss", "knn", "top1" (those present), and whether
  its last stage finished ("done": True / False / None unknown)."""
  eval_dir = EVALUATIONS[evaluation]
  last_dir = run_dir if eval_dir is None else os.path.join(run_dir, eval_dir)
  out = {"loss": _last(os.path.join(run_dir, "metrics.jsonl"), "loss"),
         "knn": _final(run_dir, "knn/top1"), "done": finished(last_dir)}
  if out["knn"] is None:
    out["knn"] = _last(os.path.join(run_dir, "metrics.jsonl"), "knn/top1")
  if eval_dir is not None:
    out["top1"] = _final(last_dir, "eval/top1")
  return {k: v for k, v in out.items() if v is not None or k == "done"}


def mean_spread(values: Sequence[float]) -> tuple[Optional[float], Optional[float]]:
  """(mean, sample standard deviation; None for fewer than 2 values) of the values."""
  if not values:
    return None, None
  mean = sum(values) / len(values)
  if len(values) < 2:
    return mean, None
  return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _cell(mean: Optional[float], spread: Optional[float] = None, percent: bool = False) -> str:
  if mean is None or math.isnan(mean):
    return "-"
  scale = 100.0 if percent else 1.0
  text = f"{scale * mean:.1f}" if percent else f"{mean:.4g}"
  if spread is not None:
    text += f" ± {scale * spread:.1f}" if percent else f" ± {spread:.2g}"
  return text


class RowSummary(NamedTuple):
  name: str
  runs: int
  done: int
  values: dict[str, tuple[Optional[float], Optional[float], int]]  # key -> (mean, sd, n)


def summarize_row(name: str, dirs: Sequence[str], evaluation: str) -> RowSummary:
  """Mean and spread of each metric over the row's runs; the sweep's own number (OWN_KEY) over
  the runs not known to be unfinished only."""
  runs = [run_metrics(d, evaluation) for d in dirs]
  final_key = OWN_KEY[evaluation]
  values = {}
  for key in ("loss", "knn", "top1"):
    got = [r[key] for r in runs if key in r and (key != final_key or r["done"] is not False)]
    mean, sd = mean_spread(got)
    values[key] = (mean, sd, len(got))
  return RowSummary(name, len(runs), sum(r["done"] is not False for r in runs), values)


def columns(evaluation: str) -> list[tuple[str, str]]:
  """(key, title) of the summary's metric columns."""
  loss = "final loss" if evaluation == "run" else "pretraining loss"
  cols = [("loss", loss), ("knn", "kNN top-1 (%)")]
  if evaluation in TOP1_TITLES:
    cols.append(("top1", TOP1_TITLES[evaluation] + " (%)"))
  return cols


def summary_table(rows: Sequence[RowSummary], evaluation: str, metric: str,
                  paper: Sequence[Optional[float]]) -> str:
  """Markdown: one line per row, its finished runs, the metric columns any row has (the
  evaluation's own always), then the paper's number."""
  shown = [(k, t) for k, t in columns(evaluation)
           if k == OWN_KEY[evaluation] or any(r.values[k][0] is not None for r in rows)]
  head = ["run", "runs done"] + [t for _, t in shown] + [f"paper: {metric}" if metric else "paper"]
  lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
  for row, number in zip(rows, paper):
    cells = [_cell(*row.values[k][:2], percent=k != "loss") for k, _ in shown]
    lines.append("| " + " | ".join([row.name, f"{row.done}/{row.runs}"] + cells
                                   + [_cell(number)]) + " |")
  return "\n".join(lines) + "\n"


def summarize(sweep_path: str, workdir: str, seeds: Optional[Sequence[int]] = None) -> str:
  """Prints the sweep's table and writes summary.md, summary.png and losses.png in `workdir`."""
  sweep = load(sweep_path)
  if not any(os.path.isdir(os.path.join(workdir, n)) for n in sweep.names):
    raise FileNotFoundError(f"No run of {sweep_path} under {workdir}: run the sweep first "
                            "(--run, or the --print lines) or pass its --workdir.")
  if not seeds:  # the seeds any row ran: a row that never started one counts it as not done
    seeds = sorted({int(os.path.basename(d)[4:]) for n in sweep.names
                    for d in seed_dirs(os.path.join(workdir, n))
                    if re.fullmatch(r"seed\d+", os.path.basename(d))}) or None
  dirs = [seed_dirs(os.path.join(workdir, n), seeds) for n in sweep.names]
  rows = [summarize_row(n, d, sweep.evaluation) for n, d in zip(sweep.names, dirs)]
  table = summary_table(rows, sweep.evaluation, sweep.metric, sweep.paper)
  note = ("Each cell: the mean over the row's runs (the evaluation's top-1: its finished runs) "
          "± the sample standard deviation where there are several.\n\n")
  with open(os.path.join(workdir, "summary.md"), "w") as f:
    f.write(f"Sweep {os.path.relpath(sweep_path, ROOT)} in {workdir}\n\n{note}{table}")
  bars, spreads = {}, {}
  for key, title in columns(sweep.evaluation):
    scale = 1.0 if key == "loss" else 100.0
    bars[title] = [None if r.values[key][0] is None else scale * r.values[key][0] for r in rows]
    spreads[title] = [None if r.values[key][1] is None else scale * r.values[key][1]
                      for r in rows]
  label = f"paper: {sweep.metric}" if sweep.metric else "paper"
  plots.plot_sweep(sweep.names, bars, sweep.paper, os.path.join(workdir, "summary.png"),
                   paper_label=label, spread=spreads)
  curves = {n: plots.series(plots.read_rows(p), "loss") for n, d in zip(sweep.names, dirs)
            for p in [os.path.join(d[0], "metrics.jsonl")] if os.path.isfile(p)}
  if curves:
    plots.plot_curves(curves, os.path.join(workdir, "losses.png"),
                      title=columns(sweep.evaluation)[0][1] + " (each row's first run)")
  print(table, end="")
  return table


# --------------------------------------------------------------------------------------------
def parse_seeds(text: Optional[str]) -> Optional[list[int]]:
  if not text:
    return None
  try:
    seeds = [int(s) for s in text.split(",")]
  except ValueError:
    raise ValueError(f"--seeds {text!r}: give whole numbers separated by commas, e.g. 0,1,2.")
  if len(set(seeds)) != len(seeds):
    raise ValueError(f"--seeds {text!r} repeats a seed.")
  return seeds


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  extra = argv[argv.index("--") + 1:] if "--" in argv else []
  argv = argv[:argv.index("--")] if "--" in argv else argv
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", help="experiment config path[:arg] of the rows (default: "
                      "the sweep file's CONFIG)")
  parser.add_argument("--sweep", required=True, help="sweep file with sweep()")
  parser.add_argument("--workdir", required=True, help="parent of the rows' workdirs")
  mode = parser.add_mutually_exclusive_group()
  mode.add_argument("--print", dest="mode", action="store_const", const="print",
                    help="print one shell line per row (and seed) running its pipeline (default)")
  mode.add_argument("--run", dest="mode", action="store_const", const="run",
                    help="run the rows here, one after another")
  mode.add_argument("--summarize", dest="mode", action="store_const", const="summarize",
                    help="table (markdown + PNG) of the rows' results beside the paper's")
  parser.add_argument("--seeds", help="comma-separated seeds: every row once per seed, in "
                      "<row>/seed<k> (--summarize: the seeds to read; default: those found)")
  parser.add_argument("--only", help="the one row (its run name) to print or run")
  parser.add_argument("--eval_args", default="", help="extra args of every evaluation run, one "
                      "shell-quoted string")
  parser.add_argument("--no_check", action="store_true",
                      help="skip checking the override keys against the configs")
  args = parser.parse_args(argv)
  seeds = parse_seeds(args.seeds)
  if args.mode == "summarize":
    summarize(args.sweep, args.workdir, seeds)
    return 0
  sweep = load(args.sweep)
  config = sweep_config(args.sweep, args.config)
  if not args.no_check:
    check(sweep, config)
  if args.only is not None and args.only not in sweep.names:
    raise ValueError(f"--only {args.only!r} is not a row of {args.sweep}; rows: "
                     f"{', '.join(sweep.names)}.")
  todo = [p for p in pipelines(sweep, config, args.workdir, seeds=seeds or (None,),
                               python=sys.executable if args.mode == "run" else "python",
                               extra=extra, eval_extra=shlex.split(args.eval_args))
          if args.only in (None, p.row)]
  if args.mode == "run":
    return 1 if run_all(todo) else 0
  print("\n".join(print_lines(args, todo, extra)))
  return 0


if __name__ == "__main__":
  try:
    sys.exit(main())
  except (ValueError, KeyError, TypeError, FileNotFoundError) as e:  # bad input: one line
    sys.exit(f"error: {e.args[0] if isinstance(e, KeyError) and e.args else e}")
