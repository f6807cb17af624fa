"""A run's saved config (`<workdir>/config.json`) as later code reads it.

A workdir outlives the code that wrote it. `load` reads its config.json with every key renamed
since under its new name (`mim_jax.config.RENAMED`) and every key added since at today's
default (the common keys of `mim_jax/defaults.py`'s `base(method)`, with the method's objective
and data defaults) and every key its run ignored dropped (`mim_jax.config.DROPPED`), so that export, the analysis and a resume read an old run as they read a new
one. A renamed key
given on the command line (`--config.<old>=...`) is refused with its new name
(`mim_jax.tools.config_file.check_keys`).

Renaming a config key: add `"old.dotted.key": "new.dotted.key"` to `mim_jax.config.RENAMED`
(a prefix renames a whole block: `"teacher": "teachers"` maps teacher.spec to teachers.spec).
tests/test_old_runs.py fails on a key of an old run's config.json that today's config lacks and
that table does not map.
"""
from __future__ import annotations

import functools
import json
import os
from typing import Any, Mapping, Optional

import ml_collections

from mim_jax import config as config_lib
from mim_jax import defaults as defaults_lib
from mim_jax import objectives

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


@functools.lru_cache(maxsize=1)
def _keys_of_some_method() -> frozenset[str]:
  """Every common key that today's defaults of at least one method have."""
  return frozenset(k for m in objectives.METHODS for k in config_lib.flatten(defaults(m)))


def without_ignored(saved: Mapping[str, Any], today: Mapping[str, Any]) -> dict[str, Any]:
  """`saved` (nested dicts) without what its run ignored: the keys of `config_lib.DROPPED` that
  `today`'s config (nested dicts) lacks while another method's configs still have them (a key
  no config has any more was renamed or removed: `unknown_keys` names it), and `optim.base_lr`
  where `optim.lr` was set (lr replaced it)."""
  keys = config_lib.flatten(today)
  dropped = set(config_lib.DROPPED) & _keys_of_some_method()
  flat = {k: v for k, v in config_lib.flatten(saved).items() if k in keys or k not in dropped}
  if flat.get("optim.lr") is not None and "optim.base_lr" in flat:
    flat["optim.base_lr"] = None
  return config_lib.unflatten(flat)


def _upgraded(path: str, renamed: Mapping[str, str], today: Optional[Mapping[str, Any]] = None
              ) -> dict[str, Any]:
  """The saved config at `path` in today's names, without what its run ignored (measured
  against `today`, default: today's defaults of its method)."""
  with open(path) as f:
    saved = config_lib.upgrade(json.load(f), renamed)
  if "method" not in saved:
    raise ValueError(f"{path} names no method: it is not a config.json that mim_jax wrote.")
  return without_ignored(saved, defaults(saved["method"]) if today is None else today)


def read(workdir_or_file: str, renamed: Mapping[str, str] = config_lib.RENAMED
         ) -> dict[str, Any]:
  """A saved config as nested dicts: renamed keys under their new names, added keys at their
  defaults, keys its run ignored dropped. FileNotFoundError when there is none."""
  path = path_of(workdir_or_file)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} does not exist: pass --config for this run.")
  saved = _upgraded(path, renamed)
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
  current = today.to_dict()
  saved = config_lib.flatten(_upgraded(path_of(workdir_or_file), renamed, current))
  return sorted(set(saved) - set(config_lib.flatten(current)))
