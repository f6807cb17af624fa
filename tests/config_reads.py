"""Which config keys a run reads: a ConfigDict that records the dotted path of each leaf value
the package takes out of it (tests/test_config_keys.py).

Attribute, item, `get`, `items()` and `values()` reads all go through ConfigDict.__getitem__ and
are recorded; serialisation (config.json, repr) and comparison are not, and neither is the run's
validator (`validate.check`), whose job is to look at every value, not to use it.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator
from unittest import mock

import ml_collections

from mim_jax import validate


class Reads:
  """The dotted keys read so far; recording stops inside `paused()`."""

  def __init__(self):
    self.keys: set[str] = set()
    self.pauses = 0

  @contextlib.contextmanager
  def paused(self) -> Iterator[None]:
    self.pauses += 1
    try:
      yield
    finally:
      self.pauses -= 1


def _paused(reads: Reads | None):
  return reads.paused() if reads is not None else contextlib.nullcontext()


def _unrecorded(name: str) -> Callable:
  """ConfigDict's method `name`, with recording paused while it runs."""
  def method(self, *args, **kwargs):
    with _paused(self._reads):
      return getattr(ml_collections.ConfigDict, name)(self, *args, **kwargs)
  return method


class ReadRecorder(ml_collections.ConfigDict):
  """A ConfigDict recording into `_reads` the path of every leaf value read from it.

  Sub-configs are ReadRecorders with their own prefix; copies the package makes
  (`copy_and_resolve_references`) keep recording under the same paths.
  """
  _reads: Reads | None = None  # class defaults: a sub-config the code creates records nothing
  _prefix: str = ""

  def __getitem__(self, key: str) -> Any:
    value = super().__getitem__(key)
    reads = self._reads
    if reads is not None and not reads.pauses and not isinstance(value,
                                                                 ml_collections.ConfigDict):
      reads.keys.add(f"{self._prefix}{key}")
    return value

  # Serialisation and comparison look at every value without using any.
  to_dict = _unrecorded("to_dict")
  to_json = _unrecorded("to_json")
  to_json_best_effort = _unrecorded("to_json_best_effort")
  to_yaml = _unrecorded("to_yaml")
  __repr__ = _unrecorded("__repr__")
  __str__ = _unrecorded("__str__")
  __eq__ = _unrecorded("__eq__")

  def copy_and_resolve_references(self, visit_map=None):
    with _paused(self._reads):
      copy = ml_collections.ConfigDict.copy_and_resolve_references(self, visit_map)
    if self._reads is not None:
      _attach(copy, self._reads, self._prefix)
    return copy


def _attach(config: ml_collections.ConfigDict, reads: Reads, prefix: str = "") -> None:
  """Turns `config` and its sub-configs into ReadRecorders writing into `reads`, in place."""
  object.__setattr__(config, "__class__", ReadRecorder)  # ConfigDict refuses it as a field
  object.__setattr__(config, "_reads", reads)
  object.__setattr__(config, "_prefix", prefix)
  for key, value in config.items(preserve_field_references=True):
    if isinstance(value, ml_collections.FieldReference):
      value = value.get()
    if isinstance(value, ml_collections.ConfigDict):
      _attach(value, reads, f"{prefix}{key}.")


def recorded(config: ml_collections.ConfigDict) -> tuple[ml_collections.ConfigDict, Reads]:
  """A recording copy of `config` (references resolved, lock kept) and its record."""
  reads = Reads()
  copy = config.copy_and_resolve_references()
  _attach(copy, reads)
  return copy, reads


@contextlib.contextmanager
def validation_unrecorded() -> Iterator[None]:
  """`validate.check` reads every value to judge it; that is not a use."""
  check = validate.check

  def quiet_check(config, *args, **kwargs):
    with _paused(getattr(config, "_reads", None)):
      return check(config, *args, **kwargs)

  with mock.patch.object(validate, "check", quiet_check):
    yield
