"""Orbax checkpoints of the train state: async, periodic, keep-last-K, resume, any mesh.

Only the student side of the state is written (step, params, optimizer state); the teacher is
never part of it. Every host calls `save`/`restore`; orbax writes each array's shards from the
hosts that own them. Restoring takes an abstract state carrying the *target* shardings, so a
checkpoint written on one mesh restores onto another.

Beside the state, a checkpoint may hold `data`: a small JSON item (the input pipeline's
position on every host), so that a resumed run reads exactly the records a straight run would.

A checkpoint that cannot be read (a truncated or garbled array file, a missing metadata file) is
not the end of a run: `restore_latest` warns in one line, moves it aside to
`checkpoints/corrupt-<step>-<n>` (never deleting it) and restores the newest one that reads. All
hosts agree on every attempt's outcome, so they restore the same step.

The run's config beside them, `<workdir>/config.json`, is written and read here too.
"""
from __future__ import annotations

import ast
import json
import os
import re
from typing import Any, Optional

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

PyTree = Any


class CheckpointError(ValueError):
  pass


def manager(workdir: str, *, keep: int = 3, asynchronous: bool = True
            ) -> ocp.CheckpointManager:
  # A gs:// workdir stays a URL (abspath would turn it into a local path); orbax writes to both.
  path = os.path.join(workdir if "://" in workdir else os.path.abspath(workdir), "checkpoints")
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         enable_async_checkpointing=asynchronous)
  return ocp.CheckpointManager(path, options=options)


def save(mngr: ocp.CheckpointManager, step: int, state: PyTree,
         data: Optional[dict] = None) -> None:
  """Starts writing `state` (and the JSON-able `data`, when given) at `step` (returns at once
  when async)."""
  items = {"state": ocp.args.StandardSave(state)}
  if data is not None:
    items["data"] = ocp.args.JsonSave(data)
  mngr.save(step, args=ocp.args.Composite(**items), force=True)


def abstract_with_shardings(abstract: PyTree, shardings: PyTree) -> PyTree:
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


def _read(mngr: ocp.CheckpointManager, step: int, target: PyTree
          ) -> tuple[PyTree, Optional[dict]]:
  """(state, data or None) of `step`; raises whatever orbax / TensorStore raise."""
  items = {"state": ocp.args.StandardRestore(target)}
  has_data = (epath.Path(mngr.directory) / str(step) / "data").exists()
  if has_data:
    items["data"] = ocp.args.JsonRestore()
  restored = mngr.restore(step, args=ocp.args.Composite(**items))
  return restored["state"], (restored["data"] if has_data else None)


def _all_hosts_ok(ok: bool) -> bool:
  """True when `ok` holds on every host (each host may see a different shard fail)."""
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


_ARRAY_FILE = re.compile(r'local file "([^"]*/d/[0-9a-f]+)"')


def _reason(step_dir: epath.Path, e: BaseException) -> str:
  """What is wrong with checkpoint `step_dir`, in words a person can act on: its metadata
  missing or unreadable, an array file truncated, missing or garbled; else orbax's message."""
  metadata = step_dir / "state" / "_METADATA"
  if not metadata.exists():
    return "its metadata file state/_METADATA is missing"
  try:
    json.loads(metadata.read_text())
  except (OSError, ValueError):
    return "its metadata file state/_METADATA is unreadable"
  text = " ".join(str(e).split())
  found = _ARRAY_FILE.search(text)
  if found:
    name = os.path.relpath(found.group(1), str(step_dir))
    if "OUT_OF_RANGE" in text or "is not valid for value of size" in text:
      return f"its array file {name} is truncated"
    if "NOT_FOUND" in text:
      return f"its array file {name} is missing"
    return f"its array file {name} is garbled: it does not decode"
  return f"it does not read ({type(e).__name__}: {text[:200]})"


def move_aside(mngr: ocp.CheckpointManager, step: int) -> str:
  """Renames checkpoint `step` to `corrupt-<step>-<n>` beside it (process 0; never deletes)."""
  root = epath.Path(mngr.directory)
  n = 0
  while (root / f"corrupt-{step}-{n}").exists():
    n += 1
  dest = root / f"corrupt-{step}-{n}"
  if jax.process_count() > 1:  # every host has picked the same name before it is taken
    multihost_utils.sync_global_devices(f"mim_jax_move_aside_{step}_{n}")
  if jax.process_index() == 0:
    (root / str(step)).rename(dest)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"mim_jax_moved_aside_{step}_{n}")
  return str(dest)


def names_under(mngr: ocp.CheckpointManager, prefix: tuple[str, ...]) -> Optional[set[str]]:
  """The names one level below `prefix` in the state of the newest checkpoint, read from its
  tree metadata (e.g. `("params", "student")`: the student's block or stack names); None when
  there is no checkpoint or its metadata does not read."""
  steps = mngr.all_steps()
  if not steps:
    return None
  try:
    meta = json.loads((epath.Path(mngr.directory) / str(max(steps)) / "state" /
                       "_METADATA").read_text())
    paths = [ast.literal_eval(k) for k in meta["tree_metadata"]]
  except Exception:  # pylint: disable=broad-except  (then the restore itself reports it)
    return None
  n = len(prefix)
  return {p[n] for p in paths if len(p) > n and tuple(p[:n]) == prefix}


def restore_latest(mngr: ocp.CheckpointManager, abstract: PyTree, shardings: PyTree
                   ) -> tuple[Optional[int], Optional[PyTree], Optional[dict]]:
  """(step, state, data) of the newest checkpoint that reads, placed with `shardings`;
  (None, None, None) when the directory holds none.

  Newer checkpoints that do not read are moved aside with one warning line each, but only once
  an older one has read: when none reads (e.g. the config's model changed) nothing is moved and
  a `CheckpointError` lists every step with its reason.
  """
  target = abstract_with_shardings(abstract, shardings)
  failed: list[tuple[int, str]] = []
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      state, data = _read(mngr, step, target)
      reason = None
    except Exception as e:  # pylint: disable=broad-except  (any failure to read: try older)
      state, data, reason = None, None, _reason(epath.Path(mngr.directory) / str(step), e)
    if _all_hosts_ok(reason is None):
      for bad, why in failed:
        dest = move_aside(mngr, bad)
        logging.warning("Checkpoint step %d cannot be read (%s); moved it to %s and resumed "
                        "from step %d.", bad, why, dest, step)
      if failed:
        mngr.reload()
      return step, state, data
    failed.append((step, reason or "another host could not read it"))
  if failed:
    listing = "; ".join(f"step {s}: {why}" for s, why in failed)
    raise CheckpointError(
        f"no checkpoint in {mngr.directory} can be restored ({listing}). If the model config "
        f"changed, use a fresh --workdir; nothing was moved or overwritten.")
  return None, None, None


def restore(mngr: ocp.CheckpointManager, abstract: PyTree, shardings: PyTree,
            step: Optional[int] = None) -> tuple[Optional[int], Optional[PyTree]]:
  """(step, state) of the given step, else of the newest checkpoint that reads (see
  `restore_latest`), placed with `shardings`; (None, None) when the directory holds none."""
  if step is None:
    found, state, _ = restore_latest(mngr, abstract, shardings)
    return found, state
  try:
    state, _ = _read(mngr, step, abstract_with_shardings(abstract, shardings))
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(
        f"checkpoint {mngr.directory}/{step} cannot be restored "
        f"({_reason(epath.Path(mngr.directory) / str(step), e)}): it is corrupt, "
        f"or written for another model (then use a fresh --workdir).") from e
  return step, state


# ---- the run's config ---------------------------------------------------------------------
RUN_CONFIG = "config.json"  # in the workdir, beside checkpoints/


def write_run_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """`<workdir>/config.json`: the config the run trains (written by process 0)."""
  if jax.process_index() == 0:
    (epath.Path(workdir) / RUN_CONFIG).write_text(config.to_json_best_effort(indent=2))


def read_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run wrote with `write_run_config` (what export and analysis rebuild from)."""
  path = epath.Path(workdir) / RUN_CONFIG
  if not path.exists():
    raise FileNotFoundError(f"{path} does not exist: {workdir} is not the workdir of a run.")
  return ml_collections.ConfigDict(json.loads(path.read_text()))
