"""A run's saved config (`<workdir>/config.json`) as later code reads it.

A workdir outlives the code that wrote it. `load` reads its config.json with every key renamed
since under its new name (`mim_jax.config.RENAMED`) and every key added since at today's
default (the common keys of `mim_jax/defaults.py`'s `base(method)`, with the method's objective
and data defaults), so that export, the analysis and a resume read an old run as they read a new
one. A renamed key
given on the command line (`--config.<old>=...`) is refused with its new name
(`mim_jax.tools.config_file.check_keys`).

Renaming a config key: add `"old.dotted.key": "new.dotted.key"` to `mim_jax.config.RENAMED`
(a prefix renames a whole block: `"teacher": "teachers"` maps teacher.spec to teachers.spec).
tests/test_old_runs.py fails on a key of an old run's config.json that today's config lacks and
that table does not map.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional

import ml_collections

from mim_jax import config as config_lib
from mim_jax import defaults as defaults_lib

FILE = "config.json"


def defaults(method: str) -> dict[str, Any]:
  """Today's defaults of every common key of `method`'s configs, as nested dicts."""
  return defaults_lib.base(method).to_dict()


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
  out = dict(base)
  for key, value in over.items():
    if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
      out[key] = _merge(out[key], value)
    else:
      out[key] = value
  return out


def path_of(workdir_or_file: str) -> str:
  return (os.path.join(workdir_or_file, FILE) if os.path.isdir(workdir_or_file)
          else workdir_or_file)


def read(workdir_or_file: str, renamed: Mapping[str, str] = config_lib.RENAMED
         ) -> dict[str, Any]:
  """A saved config as nested dicts: renamed keys under their new names, added keys at their
  defaults. FileNotFoundError when there is none."""
  path = path_of(workdir_or_file)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} does not exist: pass --config for this run.")
  with open(path) as f:
    saved = config_lib.upgrade(json.load(f), renamed)
  if "method" not in saved:
    raise ValueError(f"{path} names no method: it is not a config.json that mim_jax wrote.")
  return _merge(defaults(saved["method"]), saved)


def load(workdir_or_file: str) -> ml_collections.ConfigDict:
  """`read` as a ConfigDict."""
  return ml_collections.ConfigDict(read(workdir_or_file))


def changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
  """(key, saved value, current value) of every key whose value differs, sorted; a key only
  one side has counts as None on the other. Both sides as nested dicts read from JSON (tuples
  are lists: `json.loads(config.to_json_best_effort())` for a ConfigDict)."""
  a, b = config_lib.flatten(saved), config_lib.flatten(current)
  return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def unknown_keys(workdir_or_file: str, today: ml_collections.ConfigDict,
                 renamed: Mapping[str, str] = config_lib.RENAMED) -> list[str]:
  """Keys of a saved config (renamed ones under their new names) that `today`'s config lacks:
  renamed or removed since it was written, with no entry in `renamed`."""
  with open(path_of(workdir_or_file)) as f:
    saved = config_lib.flatten(config_lib.upgrade(json.load(f), renamed))
  return sorted(set(saved) - set(config_lib.flatten(today.to_dict())))
