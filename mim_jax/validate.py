"""Checks of a run's config and workdir that need nothing but the config, the devices and the
file system: `check(config, workdir)` runs before anything is read, built or written, and raises
a ValueError whose one line names the value and the fix (`python -m mim_jax.main` prints it as
`error: ...`)."""
from __future__ import annotations

import os

import jax
import ml_collections

from mim_jax import objectives
from mim_jax import sharding as sharding_lib
from mim_jax.data import input_pipeline


def check_workdir(workdir: str) -> None:
  """A non-empty path whose nearest existing ancestor is a writable directory (gs:// and other
  URLs are left to the storage client)."""
  if not workdir or not workdir.strip():
    raise ValueError(f"--workdir {workdir!r} is empty: give the directory for checkpoints and "
                     f"metrics, e.g. --workdir runs/maskalign.")
  if "://" in workdir:
    return
  path = os.path.abspath(workdir)
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise ValueError(f"--workdir {workdir}: {existing} is a file, not a directory; choose a "
                     f"workdir that is not under a file.")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise ValueError(f"--workdir {workdir}: {existing} is not writable (read-only file system "
                     f"or permissions); choose a writable workdir.")


def check_batches(config: ml_collections.ConfigDict) -> None:
  """Train (and kNN eval) batches split evenly over the mesh's batch shards and the hosts."""
  try:
    mesh = sharding_lib.make_mesh(config.mesh)
  except ValueError as e:
    raise ValueError(f"--config.mesh: {e} Change the mesh to fit the {jax.device_count()} "
                     f"devices.") from None
  batches = [("batch_size", config.batch_size)]
  if config.get("eval") and config.eval.get("every"):
    batches.append(("eval.batch_size", config.eval.batch_size))
  for name, size in batches:
    try:
      input_pipeline.local_batch_size(size, mesh)
    except ValueError as e:
      raise ValueError(f"--config.{name}={size}: {e}") from None
  k = int(config.optim.get("accumulate_steps", 1))
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if k < 1 or config.batch_size % (k * shards):
    raise ValueError(f"--config.optim.accumulate_steps={k}: the batch of {config.batch_size} "
                     f"must split into {k} micro-batches over {shards} batch shards; choose a "
                     f"divisor of {config.batch_size // shards} (examples per shard).")


def check_teachers(config: ml_collections.ConfigDict) -> None:
  """`teacher.spec` (one spec, or several for a method that mimics them jointly), the teachers'
  dtypes and `teacher.attention_from`; the teachers themselves are read later."""
  try:
    objectives.teacher_settings(config)
  except ValueError as e:
    raise ValueError(f"--config.{e}") from None


def check(config: ml_collections.ConfigDict, workdir: str) -> None:
  check_workdir(workdir)
  check_teachers(config)
  check_batches(config)
  input_pipeline.augment_kwargs(config.get("augment"))  # a bad RandAugment spec or probability
