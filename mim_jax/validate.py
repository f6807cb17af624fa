"""Checks of a run's config and workdir that need nothing but the config, the devices and the
file system: `check(config, workdir)` runs before anything is read, built or written, and raises
a ValueError whose one line names the value and the fix (`python -m mim_jax.main` prints it as
`error: ...`). Every value is checked against what its key may hold (`mim_jax.allowed`, declared
beside the defaults: `mim_jax.defaults`, each objective, the data pipeline) first."""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional

import jax
import ml_collections
from absl import logging

from mim_jax import allowed
from mim_jax import config as config_lib
from mim_jax import defaults
from mim_jax import objectives
from mim_jax import saved_config
from mim_jax import sharding as sharding_lib
from mim_jax.data import digits
from mim_jax.data import input_pipeline
from mim_jax.teachers import zoo


# File systems that hold no files (kernel interfaces): a directory there cannot be created.
_PSEUDO_FILE_SYSTEMS = frozenset({
    "proc", "sysfs", "devpts", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs", "pstore",
    "bpf", "configfs", "mqueue", "fusectl", "binfmt_misc", "efivarfs"})


def file_system(path: str, mounts: str = "/proc/mounts") -> Optional[str]:
  """The type of the file system `path` lies on (the longest mount point above it), from
  `mounts`; None where that table does not exist (not Linux)."""
  try:
    with open(mounts) as f:
      table = [line.split()[1:3] for line in f if len(line.split()) > 2]
  except OSError:
    return None
  path = os.path.realpath(path)
  above = [(point, kind) for point, kind in table
           if path == point or path.startswith(point.rstrip("/") + "/")]
  return max(above, key=lambda m: len(m[0]))[1] if above else None


def check_writable_dir(path: str, what: str, fix: str) -> None:
  """`path` (existing or not) can be made and written: its nearest existing ancestor is a
  writable directory on a file system that holds files. `what` names it in the message
  ("--workdir runs/x"), `fix` says what to do."""
  existing = os.path.abspath(path)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise ValueError(f"{what}: {existing} is a file, not a directory; {fix}.")
  kind = file_system(existing)
  if kind in _PSEUDO_FILE_SYSTEMS:
    raise ValueError(f"{what}: {existing} is on the kernel's {kind} file system, which holds no "
                     f"files; {fix}.")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise ValueError(f"{what}: {existing} is not writable (read-only file system or "
                     f"permissions); {fix}.")


def check_workdir(workdir: str) -> None:
  """A non-empty path whose nearest existing ancestor is a writable directory on a disk (gs://
  and other URLs are left to the storage client)."""
  if not workdir or not workdir.strip():
    raise ValueError(f"--workdir {workdir!r} is empty: give the directory for checkpoints and "
                     f"metrics, e.g. --workdir runs/maskalign.")
  if "://" in workdir:
    return
  check_writable_dir(workdir, f"--workdir {workdir}",
                     "choose a workdir on a writable disk, e.g. --workdir runs/<name>")


def check_data_dir(data: Mapping[str, Any]) -> None:
  """The TFDS data directory (`data.data_dir`, else $TFDS_DATA_DIR, else ~/tensorflow_datasets)
  can be read; where the dataset is built on first use (the digits) and is not there yet, it can
  be written. Nothing is written here, and a built dataset is only read: a read-only shared
  directory works."""
  given = data.get("data_dir")
  where = given or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
  if "://" in where:
    return
  what = (f"--config.data.data_dir={given}" if given else
          f"$TFDS_DATA_DIR={where}" if os.environ.get("TFDS_DATA_DIR") else
          f"the TFDS data dir {where} (data.data_dir unset)")
  if os.path.exists(where):
    if not os.path.isdir(where):
      raise ValueError(f"{what} is a file, not a directory; point it at the directory the "
                       f"datasets are built in.")
    if not os.access(where, os.R_OK | os.X_OK):
      raise ValueError(f"{what} cannot be read (permissions): make it readable for this user "
                       f"(chmod u+rx, or a+rx for a shared one), or set --config.data.data_dir "
                       f"to a readable copy.")
  if data.get("name") == digits.NAME and not (os.path.isdir(where) and digits.is_built(where)):
    check_writable_dir(where, f"{what} (the digits dataset is built there on first use)",
                       "build it once where it is writable and point --config.data.data_dir "
                       "there")


def check_optimizer(values: Mapping[str, Any]) -> None:
  """The optimizer's own settings are in the config (`defaults.use_optimizer` puts them there);
  a config built for another has the other's."""
  optim = values.get("optim", {})
  name = optim.get("name")
  missing = [f"optim.{k}" for k in defaults.OPTIMIZER_KEYS.get(name, ()) if k not in optim]
  if missing:
    raise ValueError(f"optim.name={name!r} reads {', '.join(missing)}, which this config (built "
                     f"for another optimizer) does not have: keep its optim.name, or build the "
                     f"config with defaults.use_optimizer(c, {name!r}).")


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


def note_changes(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Logs the values that differ from the config the workdir's run saved (a resume with other
  overrides, or a default that changed since): a resume never changes a value unnoticed."""
  path = os.path.join(workdir, saved_config.FILE)
  if "://" in workdir or not os.path.isfile(path):
    return
  try:
    saved = saved_config.read(path)
  except (OSError, ValueError) as e:
    logging.warning("%s cannot be read (%s); it is written anew.", path, e)
    return
  diffs = saved_config.changes(saved, json.loads(config.to_json_best_effort()))
  if diffs:
    logging.warning("%s holds another config than this run's: %s.", path, "; ".join(
        f"{key} {old!r} -> {new!r}" for key, old, new in diffs))


# ---- the declared values: gathering and checking --------------------------------------------------------------------
def declarations(config: Mapping[str, Any]) -> dict[str, allowed.Allowed]:
  """Every declaration that applies to `config` (a plain dict), by dotted key."""
  out = dict(defaults.ALLOWED)
  if config.get("method") in objectives.METHODS:
    out.update(allowed.prefixed("objective", objectives.get(config["method"]).ALLOWED))
  out.update(allowed.prefixed("data", input_pipeline.ALLOWED))
  out.update(allowed.prefixed("augment", input_pipeline.AUGMENT_ALLOWED))
  return out


def teacher_depths(config: Mapping[str, Any]) -> Optional[tuple[int, ...]]:
  """The depth of each teacher in `teacher.spec`, from its config.json alone; None when one is
  unknown (a checkpoint not there yet, or a spec an entry point resolves later, such as the
  demo's teacher: the run's own check after resolving it sees the depth)."""
  try:
    specs = config_lib.teacher_specs((config.get("teacher") or {}).get("spec"))
    return tuple(zoo.shape(s)[1].depth for s in specs) or None
  except Exception:  # pylint: disable=broad-except  (unreadable: loading the teacher says why)
    return None


def problems(config: Mapping[str, Any]) -> list[tuple[str, Any, str]]:
  """(key, value, what the key takes) of every value outside its declaration, in key order:
  first the values out of their own range, then (when there are none) those out of the bound
  other values put on them."""
  values = config_lib.flatten(config)
  declared = declarations(config)
  out = [(k, values[k], why) for k in sorted(values) if k in declared
         for why in [declared[k].problem(values[k])] if why]
  if out:
    return out
  context = allowed.Context(config, teacher_depths(config))
  return [(k, values[k], why) for k in sorted(values)
          if k in declared and declared[k].where and values[k] is not None
          for why in [declared[k].where(values[k], context)] if why]


def check_values(config: Mapping[str, Any]) -> None:
  """Raises ValueError, one line, on the first value outside its declaration."""
  found = problems(config)
  if found:
    key, value, why = found[0]
    more = f" (and {len(found) - 1} more: {', '.join(k for k, _, _ in found[1:4])})" if (
        len(found) > 1) else ""
    raise ValueError(f"--config.{key}={value!r} is out of range: {key} takes "
                     f"{why.rstrip('.')}{more}.")


def check(config: ml_collections.ConfigDict, workdir: str) -> None:
  values = config.to_dict()  # a plain copy: the checks read every value
  check_values(values)
  check_workdir(workdir)
  check_data_dir(values.get("data", {}))
  check_teachers(config)
  check_optimizer(values)
  check_batches(config)
  input_pipeline.augment_kwargs(config.get("augment"))  # a bad RandAugment spec or probability
  note_changes(config, workdir)
