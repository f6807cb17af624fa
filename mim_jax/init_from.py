"""`config.init_from`: initialise the student of a run from another run's or a released student.

Sources (`spec`):
  <workdir>        a pretraining (or fine-tuning) workdir of this project: its latest checkpoint;
  <workdir>:<step> that step's checkpoint.
Only the student's parameters are taken (`params["student"]`); everything else in the source
(heads, decoders, adaptors, optimizer state) is listed once as dropped. The load is strict: every
student tensor is filled or the run stops naming what is missing; a position embedding on another
grid is resized bicubically (torch's kernel, `teachers.resize`); any other shape difference stops
the run. `check(spec)` runs before anything is written, so a bad path fails in one line.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Mapping, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax import traverse_util

from mim_jax.teachers import resize

PyTree = Any


class InitFromError(ValueError):
  """A source that cannot initialise the student; the message is one line naming the fix."""


@dataclasses.dataclass(frozen=True)
class Source:
  kind: str  # "workdir"
  path: str
  step: Optional[int] = None

  def describe(self) -> str:
    return f"{self.kind} {self.path}" + (f" step {self.step}" if self.step is not None else "")


def _checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, "checkpoints")


def _steps(workdir: str) -> list[int]:
  d = _checkpoint_dir(workdir)
  if not os.path.isdir(d):
    return []
  return sorted(int(n) for n in os.listdir(d) if n.isdigit())


def check(spec: str) -> Source:
  """The source `spec` names, with the step resolved; InitFromError when it cannot be used."""
  path, step = spec, None
  m = re.fullmatch(r"(.+):(\d+)", spec)
  if m and not os.path.exists(spec):
    path, step = m.group(1), int(m.group(2))
  if not os.path.exists(path):
    raise InitFromError(f"init_from {spec!r}: no such file or directory; give a pretraining "
                        f"workdir (optionally workdir:step).")
  if os.path.isdir(path):
    steps = _steps(path)
    if not steps:
      raise InitFromError(f"init_from {spec!r}: {_checkpoint_dir(path)} holds no checkpoint; "
                          f"give a workdir of a run that saved one.")
    if step is None:
      step = steps[-1]
    elif step not in steps:
      raise InitFromError(f"init_from {spec!r}: no checkpoint at step {step}; "
                          f"saved steps: {steps}.")
    return Source("workdir", os.path.abspath(path), step)
  raise InitFromError(f"init_from {spec!r}: not a directory; give a pretraining workdir "
                      f"(optionally workdir:step).")


def _read_workdir(source: Source) -> tuple[dict[str, np.ndarray], list[str]]:
  """(flat student weights {"a/b/c": array}, dropped top-level names) of a workdir checkpoint."""
  item = epath.Path(_checkpoint_dir(source.path)) / str(source.step) / "state"
  handler = ocp.PyTreeCheckpointHandler()
  tree = handler.metadata(item).tree
  if "student" not in tree.get("params", {}):
    raise InitFromError(f"init_from {source.describe()}: its params hold no 'student' "
                        f"(found {sorted(tree.get('params', tree))}).")
  # Restore on the host as numpy: the source's mesh need not exist here.
  target = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  restored = handler.restore(item, args=ocp.args.PyTreeRestore(restore_args=target))
  params = restored["params"]
  flat = {"/".join(k): np.asarray(v) for k, v in
          traverse_util.flatten_dict(params["student"]).items()}
  dropped = [f"params/{k}" for k in params if k != "student"] + [
      k for k in restored if k not in ("params", "step")]
  return flat, dropped


def read(source: Source) -> tuple[dict[str, np.ndarray], list[str]]:
  """(flat student weights, names of what the source holds besides them)."""
  if source.kind == "workdir":
    return _read_workdir(source)
  raise InitFromError(f"init_from: unknown source kind {source.kind!r}.")


def _fit(name: str, value: np.ndarray, shape: tuple[int, ...], source: Source) -> np.ndarray:
  if value.shape == tuple(shape):
    return value
  if name.endswith("pos_embedding") and value.ndim == 3 and len(shape) == 3 \
      and value.shape[-1] == shape[-1]:
    return resize_pos_embedding(value, shape)
  raise InitFromError(f"init_from {source.describe()}: {name} has shape {value.shape}, the "
                      f"student needs {tuple(shape)}; use a source with the student's variant.")


def resize_pos_embedding(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """[1, extra + n*n, D] -> [1, extra + m*m, D], bicubic on the grid; extra (CLS) tokens kept."""
  n_src, n_dst = value.shape[1], shape[1]
  for extra in (1, 0):
    gs, gd = int(round((n_src - extra) ** 0.5)), int(round((n_dst - extra) ** 0.5))
    if gs * gs == n_src - extra and gd * gd == n_dst - extra:
      grid = value[0, extra:].reshape(gs, gs, -1)
      out = resize.resize_grid_np(grid, (gd, gd)).reshape(gd * gd, -1)
      return np.concatenate([value[0, :extra], out], 0)[None].astype(value.dtype)
  raise InitFromError(f"position embedding of {n_src} tokens cannot be resized to {n_dst}.")


def merge(student: Mapping[str, Any], weights: Mapping[str, np.ndarray], source: Source
          ) -> tuple[dict[str, Any], list[str]]:
  """The student tree with every leaf taken from `weights`; (tree, unused weight names).

  InitFromError names the student tensors the source lacks."""
  flat = traverse_util.flatten_dict(dict(student), sep="/")
  missing = sorted(k for k in flat if k not in weights)
  if missing:
    raise InitFromError(f"init_from {source.describe()}: the source lacks {len(missing)} student "
                        f"tensors: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}.")
  out = {k: _fit(k, np.asarray(weights[k]), np.shape(v), source).astype(np.asarray(v).dtype)
         if hasattr(v, "dtype") else weights[k] for k, v in flat.items()}
  unused = sorted(k for k in weights if k not in flat)
  return traverse_util.unflatten_dict(out, sep="/"), unused


def load_student(spec: str, student: Mapping[str, Any]) -> dict[str, Any]:
  """The student parameters (host numpy, same tree as `student`) initialised from `spec`."""
  source = check(spec)
  weights, dropped = read(source)
  tree, unused = merge(student, weights, source)
  logging.info("init_from: loaded %d student tensors from %s", len(weights) - len(unused),
               source.describe())
  if unused or dropped:
    logging.info("init_from: dropped (not part of the student): %s", ", ".join(dropped + unused))
  return tree
