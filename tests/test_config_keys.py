"""Every leaf key of every config (configs/*.py) is read by the package while a run of it is
assembled and run, so that no switch is silently ignored.

Reads are recorded, not searched for (tests/config_reads.py): the config handed to the package
records the dotted path of each leaf value the code takes out of it. Each config is read twice:
its runlocal form through the real loop (`runlocal_run` in conftest.py: teacher, data, step,
evaluation, checkpoints), and its full-size form while its step is lowered for 8 CPU devices
(`aot.lower_step`: abstract teachers, no weights, no data), which reads the keys whose use
depends on full-size values. A key counts as read when either run reads it, or, for a key that
only matters in a situation neither run creates (SITUATIONS), when the full-size step lowered in
that situation reads it. Every key is read: a key a config's runs never read is not in it
(`mim_jax.defaults.base`), and of two ways to give one value only one may be set.
"""
from __future__ import annotations

import glob
import importlib
import os

import ml_collections
import pytest

from mim_jax import aot, demo
from mim_jax import config as config_lib
from tests import config_reads

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                 if not os.path.basename(p).startswith(("_", "common")))
# Keys read only in a situation the config's own values do not create: the overrides of the full
# config that create it and the number of CPU devices its step is lowered for (both runs use 8).
# The key must be read when its step is lowered in that situation.
SITUATIONS: dict[str, tuple[dict[str, object], int]] = {
    # read when the teacher's patch grid differs from the student's (CLIP-L/14 under a /16)
    "teacher.resize_to_student": ({"teacher.spec": "clip_l14"}, 8),
    # read when the step is compiled for one CPU device (`mim_jax.models.platforms.select`)
    "cpu_matmul_layout": ({}, 1),
}


def load(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
  return importlib.import_module(f"configs.{name}").get_config(arg)


def keys_read_by_lowering_the_full_step(name: str, devices: int = 8, **overrides) -> set[str]:
  """The full-size step lowered for `devices` CPU devices with abstract teachers; the demo's
  teacher (trained on first use) stands in by its runlocal checkpoint, of another size: only its
  shapes are read."""
  config = load(name)
  specs = config_lib.teacher_specs(config.teacher.spec)
  if "demo" in specs:
    local = demo.ensure_teacher(runlocal=True)
    config.teacher.spec = ",".join(local if s == "demo" else s for s in specs)
  for key, value in overrides.items():
    parent, _, leaf = key.rpartition(".")
    (config[parent] if parent else config)[leaf] = value
  config, reads = config_reads.recorded(config)
  aot.lower_step(config, aot.cpu_devices(devices))
  return reads.keys


def test_the_recorder_tells_reads_from_writes_and_serialisation():
  config = ml_collections.ConfigDict(dict(a=1, b=dict(c=2, d=3, e=dict(f=4)), g=5, h=6, i=7))
  config.j = ml_collections.FieldReference(8, field_type=int)
  config, reads = config_reads.recorded(config)
  config.a = 10  # a write
  config.to_json_best_effort()  # config.json
  assert repr(config) and config == config
  assert reads.keys == set()
  _ = config.b.c, config["b"]["e"]["f"], config.get("g"), config.j
  copy = config.copy_and_resolve_references()  # the package's copies keep recording
  _ = copy.h, dict(copy.b.items())
  assert reads.keys == {"b.c", "b.e.f", "g", "j", "h", "b.d"}
  with reads.paused():
    _ = config.i
  assert "i" not in reads.keys


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_key_is_read(name, runlocal_run, monkeypatch):
  keys = set(config_lib.flat_keys(load(name)))
  assert keys == set(config_lib.flat_keys(load(name, "runlocal=True")))  # values, not keys
  read = set(runlocal_run(name).reads)
  monkeypatch.setenv("MIM_JAX_CACHE", runlocal_run.cache_dir)
  read |= keys_read_by_lowering_the_full_step(name)
  for key in sorted(keys - read):
    if key in SITUATIONS:
      overrides, devices = SITUATIONS[key]
      if key in keys_read_by_lowering_the_full_step(name, devices, **overrides):
        read.add(key)
  unread = sorted(keys - read)
  assert unread == [], f"{name}: keys no code reads: {unread}"
