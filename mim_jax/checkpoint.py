"""Orbax checkpoints of the train state: async, periodic, keep-last-K, resume, any mesh.

Only the student side of the state is written (step, params, optimizer state); the teacher is
never part of it. Every host calls `save`/`restore`; orbax writes each array's shards from the
hosts that own them. Restoring takes an abstract state carrying the *target* shardings, so a
checkpoint written on one mesh restores onto another.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

PyTree = Any


class CheckpointError(RuntimeError):
  pass


def manager(workdir: str, *, keep: int = 3, asynchronous: bool = True
            ) -> ocp.CheckpointManager:
  # A gs:// workdir stays a URL (abspath would turn it into a local path); orbax writes to both.
  path = os.path.join(workdir if "://" in workdir else os.path.abspath(workdir), "checkpoints")
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         enable_async_checkpointing=asynchronous)
  return ocp.CheckpointManager(path, options=options)


def save(mngr: ocp.CheckpointManager, step: int, state: PyTree) -> None:
  """Starts writing `state` at `step` (returns at once when async)."""
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=True)


def abstract_with_shardings(abstract: PyTree, shardings: PyTree) -> PyTree:
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


def restore(mngr: ocp.CheckpointManager, abstract: PyTree, shardings: PyTree,
            step: Optional[int] = None) -> tuple[Optional[int], Optional[PyTree]]:
  """(step, state) of the latest (or given) checkpoint, placed with `shardings`;
  (None, None) when the directory holds none."""
  step = mngr.latest_step() if step is None else step
  if step is None:
    return None, None
  target = abstract_with_shardings(abstract, shardings)
  try:
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))
  except (ValueError, KeyError, TypeError) as e:
    raise CheckpointError(
        f"Checkpoint {mngr.directory}/{step} does not match this config's model "
        f"({type(e).__name__}: {str(e)[:300]}). Use a fresh --workdir for a different model; "
        f"nothing was overwritten.") from e
  return step, restored["state"]
