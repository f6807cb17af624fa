"""The student's two block layouts, and a checkpoint of one restored into the other.

An unscanned student holds `block{i}` (+ `rel_pos_bias_{i}` for per-layer tables); a scanned one
(`student.scan`) one stack per segment, `layers/block/...` with a leading [n] axis (and
`layers_{k}` for a segment from block k; names in `models.vit`: `stack_name`, `stack_starts`).
Sources and exports use `block{i}`; `restack` moves a student tree between the layouts, and
`restore_any_layout` restores a train state written with the other `student.scan` (or another
split of the stack).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from mim_jax import checkpoint as ckpt_lib
from mim_jax.models.vit import is_block_name, stack_name, stack_starts

def _moved_sharding(sharding: Any, spec: Callable[[tuple], tuple]) -> Any:
  """A NamedSharding with its partition spec changed by `spec`; other shardings (or None) as
  they are."""
  if isinstance(sharding, jax.sharding.NamedSharding):
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(
        *spec(tuple(sharding.spec))))
  return sharding


def _leaf_at(a: Any, i: int) -> Any:
  """Layer i of a stacked leaf (an array, or a ShapeDtypeStruct whose sharding loses the layer
  axis)."""
  if isinstance(a, jax.ShapeDtypeStruct):
    return jax.ShapeDtypeStruct(a.shape[1:], a.dtype,
                                sharding=_moved_sharding(a.sharding, lambda p: p[1:]))
  return a[i]


def _stacked(leaves: Sequence[Any]) -> Any:
  """The layers stacked (arrays, or ShapeDtypeStructs whose sharding gains an unsplit layer
  axis)."""
  if isinstance(leaves[0], jax.ShapeDtypeStruct):
    return jax.ShapeDtypeStruct((len(leaves),) + tuple(leaves[0].shape), leaves[0].dtype,
                                sharding=_moved_sharding(leaves[0].sharding,
                                                         lambda p: (None,) + p))
  return (np.stack if isinstance(leaves[0], np.ndarray) else jnp.stack)(leaves)


def unstack_blocks(params: dict) -> dict:
  """A scanned student's parameters -> the `block{i}` (+ `rel_pos_bias_{i}`) layout of the
  unscanned one; other entries kept. A tree without a stack is returned as it is. Leaves may
  be arrays or ShapeDtypeStructs (unboxed)."""
  params = dict(params)
  for start in stack_starts(params):
    stack = params.pop(stack_name(start))
    length = jax.tree.leaves(stack["block"])[0].shape[0]
    for j in range(length):
      params[f"block{start + j}"] = jax.tree.map(lambda a: _leaf_at(a, j), stack["block"])
      if "rel_pos_bias" in stack:
        params[f"rel_pos_bias_{start + j}"] = jax.tree.map(lambda a: _leaf_at(a, j),
                                                           stack["rel_pos_bias"])
  return params


def stack_blocks(params: dict, depth: int, starts: Sequence[int] = (0,)) -> dict:
  """The inverse of `unstack_blocks`: `block{i}` (+ `rel_pos_bias_{i}`), i < depth, stacked
  into one stack per segment [starts[j], starts[j + 1]) (`layers/block`, `layers_{k}/block`, ...;
  + `rel_pos_bias`)."""
  params = dict(params)
  bounds = list(starts) + [depth]
  for start, stop in zip(bounds[:-1], bounds[1:]):
    def stacked(prefix):
      return jax.tree.map(lambda *a: _stacked(a),
                          *[params.pop(f"{prefix}{i}") for i in range(start, stop)])
    stack = {"block": stacked("block")}
    if f"rel_pos_bias_{start}" in params:
      stack["rel_pos_bias"] = stacked("rel_pos_bias_")
    params[stack_name(start)] = stack
  return params


def restack(params: dict, starts: Sequence[int]) -> dict:
  """A student's parameters, in either layout, in the layout of `starts`: `block{i}` for (),
  else one scanned stack from each start (`stack_starts`)."""
  flat = unstack_blocks(params)
  depth = sum(1 for k in flat if is_block_name(k))
  return stack_blocks(flat, depth, starts) if starts else flat


def restack_state(state: Any, starts: tuple[int, ...]) -> Any:
  """`state` with every student parameter tree in it (the parameters, the optimizer's moments)
  in the block layout `starts` (`restack`)."""
  def is_params(x):
    return isinstance(x, dict) and isinstance(x.get("student"), dict)
  return jax.tree.map(
      lambda x: {**x, "student": restack(x["student"], starts)} if is_params(x) else x,
      state, is_leaf=is_params)


def restore_any_layout(mngr, abstract: Any, shardings: Any) -> tuple[Any, Any, Any]:
  """`checkpoint.restore_latest`, also from a checkpoint written with the other `student.scan`
  (or another split of the scanned stack): it is read in its own block layout, with the target
  shardings moved to it, and restacked on the devices into the layout of `abstract`."""
  student = abstract.params.get("student") if isinstance(abstract.params, dict) else None
  names = ckpt_lib.names_under(mngr, ("params", "student")) if student is not None else None
  wanted, written = stack_starts(student or {}), stack_starts(names or ())
  if not any(map(is_block_name, names or ())) or written == wanted:
    return ckpt_lib.restore_latest(mngr, abstract, shardings)
  source = restack_state(ckpt_lib.abstract_with_shardings(abstract, shardings), written)
  step, state, data = ckpt_lib.restore_latest(
      mngr, source, jax.tree.map(lambda a: a.sharding, source))
  if state is not None:
    state = jax.jit(functools.partial(restack_state, starts=wanted),
                    out_shardings=shardings)(state)
    logging.warning("Checkpoint step %d holds the student's blocks %s; restacked them %s for "
                    "this run's student.scan.", step, _layout_name(written),
                    _layout_name(wanted))
  return step, state, data


def _layout_name(starts: tuple[int, ...]) -> str:
  return (f"scanned (stacks from blocks {', '.join(map(str, starts))})" if starts
          else "unscanned (block{i})")
