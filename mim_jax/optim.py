"""Optimizer and learning-rate schedule from a config.

lr = base_lr * global_batch / 256 (the MAE/MaskAlign scaling rule), linear warmup from 0, then
cosine decay to `min_lr`. AdamW decays only kernels (matrices of Dense/attention/patch layers);
biases, norms, position/CLS/mask tokens, layer-scale gammas and the alignment matrix are excluded
(their leaf names do not end in "kernel").
"""
from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax


def peak_lr(optim: ml_collections.ConfigDict, global_batch: int) -> float:
  if optim.get("lr") is not None:
    return float(optim.lr)
  return float(optim.base_lr) * global_batch / 256


def make_schedule(optim: ml_collections.ConfigDict, *, total_steps: int, warmup_steps: int,
                  global_batch: int) -> optax.Schedule:
  lr = peak_lr(optim, global_batch)
  min_lr = float(optim.get("min_lr", 0.0))
  warmup_steps = min(warmup_steps, total_steps)
  decay_steps = max(total_steps - warmup_steps, 1)
  kind = optim.get("schedule", "cosine")
  if kind == "cosine":
    decay = optax.cosine_decay_schedule(lr, decay_steps, alpha=min_lr / lr if lr else 0.0)
  elif kind == "constant":
    decay = optax.constant_schedule(lr)
  elif kind == "linear":
    decay = optax.linear_schedule(lr, min_lr, decay_steps)
  else:
    raise ValueError(f"Unknown schedule {kind!r}: use 'cosine', 'linear' or 'constant'.")
  if not warmup_steps:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup_steps), decay],
                              [warmup_steps])


def decay_mask(params: Any) -> Any:
  """True for leaves that get weight decay: those whose name ends in 'kernel'."""
  def is_kernel(path, _):
    last = path[-1]
    name = getattr(last, "key", getattr(last, "name", str(last)))
    return str(name).endswith("kernel")
  return jax.tree_util.tree_map_with_path(is_kernel, params)


def make_optimizer(optim: ml_collections.ConfigDict, schedule: optax.Schedule
                   ) -> optax.GradientTransformation:
  name = optim.get("name", "adamw")
  if name != "adamw":
    raise ValueError(f"Unknown optimizer {name!r}: only 'adamw' is implemented.")
  chain = []
  if optim.get("clip_norm"):
    chain.append(optax.clip_by_global_norm(float(optim.clip_norm)))
  chain.append(optax.adamw(schedule, b1=float(optim.b1), b2=float(optim.b2),
                           eps=float(optim.get("eps", 1e-8)),
                           weight_decay=float(optim.weight_decay), mask=decay_mask))
  return optax.chain(*chain)
