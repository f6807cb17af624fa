"""Objectives: one module per method, chosen by `config.method`.

Each module defines
  make_model(config, teacher) -> nn.Module   # the trainable part: student (+ heads, decoder)
      whose __call__(images, masks, *, train) returns a dict of outputs;
  loss_fn(out, teacher_out, masks, batch, config) -> (loss, metrics)   # pure
  default_config() -> ConfigDict               # the method's switches, `config.objective`
and the train step is the same for all of them.
"""
from __future__ import annotations

import importlib
from types import ModuleType

METHODS = {
    "maskalign": "mim_jax.objectives.maskalign",
    "maskdistill": "mim_jax.objectives.maskdistill",
    "fd": "mim_jax.objectives.fd",
    "mae": "mim_jax.objectives.mae",
    "mrmae": "mim_jax.objectives.mrmae",
    "classify": "mim_jax.objectives.classify",
    "linear_probe": "mim_jax.objectives.linear_probe",
}


def get(name: str) -> ModuleType:
  if name not in METHODS:
    raise ValueError(f"Unknown method {name!r}; known: {sorted(METHODS)}.")
  return importlib.import_module(METHODS[name])
