"""Loading an experiment config from `path[:arg]`, as `--config` spells it, outside absl flags.

`mim_jax.main` reads configs through ml_collections' config_flags; tools that only need the
ConfigDict (dataset statistics, the sweep launcher's checks) use `load` here instead.
"""
from __future__ import annotations

import importlib.util
import os
from types import ModuleType
from typing import Any, Iterable, Mapping, Optional

import ml_collections

from mim_jax import config as config_lib


def split_spec(spec: str) -> tuple[str, Optional[str]]:
  """'configs/x.py:runlocal=True' -> ('configs/x.py', 'runlocal=True'); no ':' -> arg None."""
  path, sep, arg = spec.partition(":")
  return path, (arg if sep else None)


def load_module(path: str) -> ModuleType:
  """Imports a Python file by path (a config or a sweep file)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No such file: {path}")
  name = "_mim_jax_file_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load(spec: str) -> ml_collections.ConfigDict:
  """`get_config(arg)` of the file named by `spec` = 'path[:arg]'."""
  path, arg = split_spec(spec)
  module = load_module(path)
  if not hasattr(module, "get_config"):
    raise ValueError(f"{path} has no get_config(arg).")
  return module.get_config(arg) if arg is not None else module.get_config()


def check_keys(config: ml_collections.ConfigDict, keys: Iterable[str], prefix: str = "") -> None:
  """Raises KeyError naming the closest valid key for any dotted key the config lacks, or its
  new name when it was renamed (`mim_jax.config.RENAMED`); keys and the hint are spelt
  `prefix + key`, e.g. prefix "--config." for command-line flags."""
  valid = set(config_lib.flat_keys(config))
  for key in keys:
    new = config_lib.new_name(key)
    if key not in valid and new in valid:
      raise KeyError(f"{prefix}{key} was renamed to {prefix}{new}: use that")
    if key not in valid:
      guess = config_lib.closest_key(config, key)
      hint = f"; did you mean {prefix}{guess}?" if guess else ""
      raise KeyError(f"{prefix}{key} is not a field of the config{hint}")


# Keys whose value is not used while another key is set: (key, the key that replaces it).
REPLACED_BY = {"optim.base_lr": "optim.lr"}


def check_replaced(config: ml_collections.ConfigDict, overrides: Mapping[str, str],
                   prefix: str = "") -> None:
  """Raises ValueError when `overrides` ({dotted key: value as given}) set a key that another
  key, set by the config or the overrides, replaces: the run would not use the value asked."""
  for key, other in REPLACED_BY.items():
    if key not in overrides:
      continue
    value = overrides.get(other, get_dotted(config, other))
    if value is not None and str(value) != "None":
      raise ValueError(f"{prefix}{key}={overrides[key]} would not be used: {other}={value} "
                       f"replaces it; set {prefix}{other} instead")


def get_dotted(config: ml_collections.ConfigDict, key: str) -> Any:
  node = config
  for part in key.split("."):
    node = node[part]
  return node
