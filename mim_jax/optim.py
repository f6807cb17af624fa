"""Optimizer and learning-rate schedule from a config.

lr = base_lr * global_batch / 256 (the MAE/MaskAlign scaling rule), linear warmup from 0, then
cosine decay to `min_lr`. AdamW decays only kernels (matrices of Dense/attention/patch layers);
biases, norms, position/CLS/mask tokens, layer-scale gammas and the alignment matrix are excluded
(their leaf names do not end in "kernel").

Layer-wise lr decay (fine-tuning, optional `optim.layer_decay`): the update of a parameter in
layer l of a depth-L student is scaled by decay ** (L + 1 - l), where the patch embedding, CLS and
position embedding (and a hybrid student's convolution stages) are layer 0, `block{i}` (and its
table `rel_pos_bias_{i}`) is layer i + 1, and everything else (final norms, heads, a shared
table) is layer L + 1 (scale 1), as in BEiT. A scanned student's stacked blocks (`layers/...`,
leading [depth] axis) get one scale per row. Scaling AdamW's final update scales its
weight-decay term too, which is exactly a per-parameter-group lr as MAE/BEiT's fine-tuning sets
it.
"""
from __future__ import annotations

import re
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mim_jax.models import vit as vit_lib


OPTIMIZERS = ("adamw", "lars", "sgd")
SCHEDULES = ("cosine", "linear", "constant")


def peak_lr(optim: ml_collections.ConfigDict, global_batch: int) -> float:
  """`optim.lr` when set, else `optim.base_lr` scaled by the batch (a command line that sets
  base_lr while lr is set is refused: `mim_jax.tools.config_file.check_replaced`)."""
  lr, base_lr = optim.get("lr"), optim.get("base_lr")
  if lr is None and base_lr is None:
    raise ValueError("optim.lr and optim.base_lr are both None: set one (the peak learning "
                     "rate, or its value at batch 256).")
  return float(lr) if lr is not None else float(base_lr) * global_batch / 256


def make_schedule(optim: ml_collections.ConfigDict, *, total_steps: int, warmup_steps: int,
                  global_batch: int) -> optax.Schedule:
  lr = peak_lr(optim, global_batch)
  min_lr = float(optim.get("min_lr", 0.0))
  warmup_steps = min(warmup_steps, total_steps)
  decay_steps = max(total_steps - warmup_steps, 1)
  kind = optim.get("schedule", "cosine")
  if kind == "cosine":  # cosine from lr to min_lr over the steps after the warmup
    decay = optax.cosine_decay_schedule(lr, decay_steps, alpha=min_lr / lr if lr else 0.0)
  elif kind == "constant":
    decay = optax.constant_schedule(lr)
  elif kind == "linear":
    decay = optax.linear_schedule(lr, min_lr, decay_steps)
  else:
    raise ValueError(f"Unknown schedule {kind!r}: use one of {SCHEDULES}.")
  if not warmup_steps:  # (optax warns of a 0-step linear schedule)
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


# Leaf names that belong to the embedding, layer 0 of layer-wise decay.
EMBEDDING_NAMES = ("patch_embed", "cls", "pos_embedding", "mask_token")
# Block i's parameters, and its own relative position bias table (per-layer BEiT students).
_BLOCK = re.compile(r"^(?:block|rel_pos_bias_)(\d+)$")
# A hybrid student's stem: its patch embeddings and convolution stages are layer 0 too
# (ConvMAE's util/lr_decay.py; mim_jax/models/convvit.py).
_STEM = re.compile(r"^(?:patch_embed\d+|conv\d+_block\d+)$")


def _path_names(path) -> list[str]:
  return [str(getattr(k, "key", getattr(k, "name", k))) for k in path]


def layer_id(names: list[str], depth: int) -> int:
  """Layer of a parameter from its path names: embeddings 0, block{i} i + 1, others depth + 1."""
  for name in names:
    match = _BLOCK.match(name)
    if match:
      return int(match.group(1)) + 1
  if any(name in EMBEDDING_NAMES or _STEM.match(name) for name in names):
    return 0
  return depth + 1


def layer_decay_scales(params: Any, decay: float) -> Any:
  """A tree like `params` of python floats decay ** (depth + 1 - layer_id); for the stacked
  blocks of a scanned student, float32 arrays [depth, 1, ...] (block i's scale in row i).

  depth = the number of distinct `block{i}` indices in the tree, or the stack's length: meant
  for a tree with one encoder (fine-tuning), not for one with decoder blocks too.
  """
  leaves = jax.tree_util.tree_leaves_with_path(params)
  paths = [_path_names(p) for p, _ in leaves]
  blocks = {int(m.group(1)) for names in paths for n in names for m in [_BLOCK.match(n)] if m}
  stacks = {}  # first block of a scanned stack -> its length
  for names, (_, x) in zip(paths, leaves):
    start = _stack_start(names)
    if start is not None:
      stacks[start] = np.shape(x)[0]
  depth = len(blocks) + sum(stacks.values())

  def scale(path, x):
    names = _path_names(path)
    start = _stack_start(names)
    if start is not None:  # rows are blocks start.., layers start + 1..
      rows = float(decay) ** (depth - start - np.arange(stacks[start], dtype=np.float32))
      return rows.reshape((stacks[start],) + (1,) * (np.ndim(x) - 1))
    return float(decay) ** (depth + 1 - layer_id(names, depth))
  return jax.tree_util.tree_map_with_path(scale, params)


def _stack_start(names: Sequence[str]) -> Optional[int]:
  """The first block of the scanned stack a parameter lies in (`layers`: 0, `layers_{k}`: k),
  or None outside one."""
  starts = [k for k in map(vit_lib.stack_start, names) if k is not None]
  return starts[0] if starts else None


def scale_by_layer_decay(decay: float) -> optax.GradientTransformation:
  """Multiplies each update by its layer's `layer_decay_scales` factor (stateless)."""

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    scales = layer_decay_scales(updates, decay)
    return jax.tree.map(lambda u, s: u * jnp.asarray(s, u.dtype), updates, scales), state

  return optax.GradientTransformation(init_fn, update_fn)


def momentum_optimizer(name: str, schedule: optax.Schedule, *, momentum: float,
                       weight_decay: float) -> optax.GradientTransformation:
  """LARS (MAE's linear probe: weight decay and trust ratio on kernels only) or SGD with
  momentum (weight decay on kernels only)."""
  if name == "lars":
    return optax.lars(schedule, weight_decay=weight_decay, weight_decay_mask=decay_mask,
                      trust_ratio_mask=decay_mask, momentum=momentum)
  if name == "sgd":
    return optax.chain(optax.add_decayed_weights(weight_decay, mask=decay_mask),
                       optax.sgd(schedule, momentum=momentum))
  raise ValueError(f"Unknown optimizer {name!r}: use one of {OPTIMIZERS}.")


def _compile_frozen(patterns: Sequence[str]) -> list[re.Pattern]:
  out = []
  for pattern in patterns:
    try:
      out.append(re.compile(pattern))
    except re.error as e:
      raise ValueError(f"optim.frozen: {pattern!r} is not a regular expression ({e}); give "
                       f"parameter paths such as 'student' or 'student/block[0-5]/.*'.") from None
  return out


def _is_frozen(path: str, compiled: Sequence[re.Pattern]) -> bool:
  """A pattern freezes the parameter when it matches its whole path ("student/block0/ln1/scale")
  or the whole of a leading part of it ("student", "student/block0"), so a top-level group's
  name freezes the group."""
  parts = path.split("/")
  prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
  return any(c.fullmatch(p) for c in compiled for p in prefixes)


def frozen_mask(params: Any, patterns: Sequence[str]) -> Any:
  """A tree like `params` of bools: True where a pattern of `optim.frozen` freezes the leaf.

  Paths join the parameter tree's keys with "/": "student/block3/attn/qkv_kernel",
  "student/patch_embed/kernel", "head/bias". ValueError names a pattern that is not a regular
  expression or freezes nothing (a misspelt path is never ignored)."""
  compiled = _compile_frozen(patterns)
  leaves = jax.tree_util.tree_leaves_with_path(params)
  paths = ["/".join(_path_names(p)) for p, _ in leaves]
  for pattern, c in zip(patterns, compiled):
    if not any(_is_frozen(path, [c]) for path in paths):
      example = next((p for p in paths if "block" in p), paths[0] if paths else "")
      raise ValueError(f"optim.frozen: {pattern!r} matches no parameter (paths look like "
                       f"{example!r}; a scanned student's blocks are 'student/layers/...'): "
                       f"fix the pattern.")
  return jax.tree_util.tree_map_with_path(
      lambda path, _: _is_frozen("/".join(_path_names(path)), compiled), params)


def zero_frozen(frozen: Sequence[str]) -> optax.GradientTransformation:
  """Sets the updates of the parameters that the patterns in `frozen` match to zero
  (`frozen_mask`; stateless). The patterns are checked against the parameters at init."""

  def init_fn(params):
    # optax.tree_map_params also calls init on one placeholder object: check parameter trees
    if isinstance(params, dict):
      frozen_mask(params, frozen)  # raises on a pattern that matches nothing
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    mask = frozen_mask(updates, frozen)
    return jax.tree.map(lambda u, m: jnp.zeros_like(u) if m else u, updates, mask), state

  return optax.GradientTransformation(init_fn, update_fn)


def make_optimizer(optim: ml_collections.ConfigDict, schedule: optax.Schedule
                   ) -> optax.GradientTransformation:
  """AdamW (pretraining, fine-tuning) or LARS / SGD (`optim.momentum`; the linear probe).
  `optim.frozen` (optional): parameter path patterns whose parameters get no update (the linear
  probe's encoder "student"; "student/block[0-5]/.*": the first six blocks; see `frozen_mask`).
  Their optimizer state is still allocated (zeros that stay zeros): the state's layout
  is traced without the parameter tree (`optax.tree_map_params`), which a per-group optimizer
  cannot be."""
  name = optim.get("name", "adamw")
  chain = []
  if optim.get("clip_norm"):
    chain.append(optax.clip_by_global_norm(float(optim.clip_norm)))
  if name == "adamw":
    chain.append(optax.adamw(schedule, b1=float(optim.b1), b2=float(optim.b2),
                             eps=float(optim.get("eps", 1e-8)),
                             weight_decay=float(optim.weight_decay), mask=decay_mask,
                             mu_dtype=jnp.dtype(optim.get("mu_dtype", "float32"))))
  else:
    chain.append(momentum_optimizer(name, schedule, momentum=float(optim.momentum),
                                    weight_decay=float(optim.weight_decay)))
  if optim.get("layer_decay") is not None:
    chain.append(scale_by_layer_decay(float(optim.layer_decay)))
  if optim.get("frozen"):
    chain.append(zero_frozen(tuple(optim.frozen)))
  return optax.chain(*chain)
