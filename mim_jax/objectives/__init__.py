"""Objectives: one module per method, chosen by `config.method`.

Each module defines
  make_model(config, teacher) -> nn.Module   # the trainable part: student (+ heads, decoder)
      whose __call__(images, masks, *, train) returns a dict of outputs;
  loss_fn(out, teacher_out, masks, batch, config) -> (loss, metrics)   # pure
  default_config() -> ConfigDict               # the method's switches, `config.objective`
  evaluate(setup, params) -> {name: value}     # the run's periodic evaluation: one of
      `evaluators` (kNN of the student's features for pretraining, a classifier's top-1/top-5)
  prepare_state(setup, state) -> state         # once, on a fresh state before the first step
      (after init_from): `common.keep_state` unless the method measures something there
and may set SEVERAL_TEACHERS = True (`teacher.spec` may list teachers it mimics jointly),
TEACHER = False (it takes no teacher) or MASKS = False (its student sees every patch): its
configs then have no keys for what it does not do (`mim_jax.defaults.base`).
The train step and the loop are the same for all of them; `get` refuses a module that lacks a
name of this contract. `teacher_settings(config)`: the (spec, dtype) of each teacher a run of the
method takes, checked against SEVERAL_TEACHERS.
"""
from __future__ import annotations

import importlib
from types import ModuleType

import ml_collections

from mim_jax import config as config_lib
from mim_jax.objectives import common

METHODS = {
    "maskalign": "mim_jax.objectives.maskalign",
    "maskdistill": "mim_jax.objectives.maskdistill",
    "fd": "mim_jax.objectives.fd",
    "mae": "mim_jax.objectives.mae",
    "mrmae": "mim_jax.objectives.mrmae",
    "classify": "mim_jax.objectives.classify",
    "linear_probe": "mim_jax.objectives.linear_probe",
}


CONTRACT = ("make_model", "loss_fn", "default_config", "evaluate", "prepare_state")


def get(name: str) -> ModuleType:
  if name not in METHODS:
    raise ValueError(f"Unknown method {name!r}; known: {sorted(METHODS)}.")
  module = importlib.import_module(METHODS[name])
  missing = [n for n in CONTRACT if not callable(getattr(module, n, None))]
  if missing:
    raise TypeError(f"Objective {module.__name__} lacks {missing} of the contract in "
                    f"mim_jax/objectives/__init__.py.")
  return module


def teacher_settings(config: ml_collections.ConfigDict) -> tuple[tuple[str, str], ...]:
  """(spec, dtype) of each teacher in `teacher.spec`, checked; () for teacher-free methods.

  Several teachers only where the method mimics them jointly (its module sets
  `SEVERAL_TEACHERS`); `teacher.attention_from` indexes the one whose attention drives
  attentive / focused masks. Every problem is a one-line ValueError naming the fix.
  """
  if not config.get("teacher"):
    return ()
  spec = config.teacher.get("spec")
  specs = config_lib.teacher_specs(spec)
  if len(specs) > 1 and not getattr(get(config.method), "SEVERAL_TEACHERS", False):
    joint = sorted(m for m in METHODS if getattr(get(m), "SEVERAL_TEACHERS", False))
    raise ValueError(f"teacher.spec {spec!r} lists {len(specs)} teachers, but method "
                     f"{config.method!r} takes one: only {', '.join(joint)} mimics a list of "
                     f"teachers jointly; give one spec.")
  k = config.teacher.get("attention_from", 0)
  if specs and not 0 <= k < len(specs):
    raise ValueError(f"teacher.attention_from={k} is not the index of one of the "
                     f"{len(specs)} teachers {specs}: use 0 to {len(specs) - 1}.")
  return tuple((s, common.teacher_dtype(config, i)) for i, s in enumerate(specs))
