"""Meshes, logical axis rules and shardings.

Arrays are sharded by name: modules annotate parameters and activations with logical axes
(batch, length, embed, heads, kv, mlp); `LOGICAL_RULES` maps those to mesh axes. The mesh has
three axes, `data` (pure data parallelism), `fsdp` (data parallelism with parameters and
optimizer state sharded along `embed`) and `model` (tensor parallelism over heads / mlp).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")
# Keys of `config.mesh` that are options, not axes. allow_split_physical_axes: None = JAX's
# choice (on for v5e, off elsewhere), True / False = passed to mesh_utils.create_device_mesh:
# whether one mesh axis may span parts of several physical axes of the slice (needed for some
# shapes, e.g. an fsdp axis longer than any physical axis; collectives may then be slower).
MESH_OPTIONS = ("allow_split_physical_axes",)

LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("heads", "model"),
    ("mlp", "model"),
    ("kv", None),
    ("length", None),
    ("layers", None),
    ("vocab", None),
)


def mesh_shape(spec: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
  """{'data': -1, 'fsdp': 2} -> (n/2, 2, 1): one axis may be -1 (takes the rest); option keys
  (`MESH_OPTIONS`) are ignored here."""
  spec = {k: v for k, v in spec.items() if k not in MESH_OPTIONS}
  unknown = set(spec) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"Unknown mesh axes {sorted(unknown)}; use {MESH_AXES}.")
  sizes = [int(spec.get(a, 1)) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"At most one mesh axis may be -1, got {dict(spec)}.")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(f"Mesh {dict(spec)} does not divide {num_devices} devices; "
                       f"{_fitting(num_devices, sizes[2])}.")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(f"Mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                     f"but {num_devices} are available; {_fitting(num_devices, sizes[2])}.")
  return tuple(sizes)


def _fitting(num_devices: int, model: int) -> str:
  """What would fit: the fsdp values that divide the devices with data=-1."""
  model = model if model > 0 and num_devices % model == 0 else 1
  rest = num_devices // model
  fsdp = [f for f in range(1, rest + 1) if rest % f == 0]
  return (f"with data=-1 and model={model}, fsdp may be any of {fsdp}" if len(fsdp) <= 16 else
          f"with data=-1 and model={model}, fsdp must divide {rest}")


def make_mesh(spec: Optional[Mapping[str, int]] = None,
              devices: Optional[Sequence[Any]] = None) -> Mesh:
  """A (data, fsdp, model) mesh over `devices` (default: all), axis types Auto.

  `devices` may also be the abstract devices of a TPU topology (`mim_jax.aot`): those are laid
  out along the physical interconnect exactly as the real slice's devices would be.
  """
  local = list(jax.devices())
  devices = list(local if devices is None else devices)
  spec = dict(spec or {"data": -1})
  shape = mesh_shape(spec, len(devices))
  types = (AxisType.Auto,) * len(MESH_AXES)
  if devices != local and devices[0] in local:
    # A subset of the local devices (tests pass [:2]) keeps its given order.
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=types)
  # All devices, or a whole compile-only topology: ordered along the ICI rings.
  split = spec.get("allow_split_physical_axes")
  try:
    if split is None:
      return jax.make_mesh(shape, MESH_AXES, axis_types=types, devices=devices)
    return Mesh(mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=bool(
        split)), MESH_AXES, axis_types=types)
  except (ValueError, NotImplementedError, AssertionError) as e:
    why = str(e).split(". ")[0].strip().rstrip(".")  # JAX's reason, first sentence
    hint = ("set mesh.allow_split_physical_axes=True to let a mesh axis span several physical "
            "axes" if not split else "choose other axis sizes")
    raise ValueError(f"Mesh {dict(zip(MESH_AXES, shape))} does not fit the physical layout of "
                     f"the {len(devices)} {devices[0].device_kind} devices ({why}); {hint}, or "
                     f"{_fitting(len(devices), shape[2])}.") from None


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
  """Leading axis over (data, fsdp), the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _fit(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
  """Drops mesh axes from dimensions they do not divide (those stay replicated)."""
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    size = math.prod(mesh.shape[a] for a in names)
    out.append(axes if names and dim % size == 0 else None)
  return P(*out)


def logical_shardings(abstract_tree: Any, mesh: Mesh,
                      rules: Sequence[tuple[str, Any]] = LOGICAL_RULES) -> Any:
  """Shardings for a tree of (possibly `nn.Partitioned`-boxed) abstract arrays.

  Leaves without logical names are replicated; a dimension a mesh axis does not divide stays
  replicated instead of failing (e.g. a 3-channel patch kernel axis).
  """
  specs = nn.get_partition_spec(abstract_tree)
  mesh_specs = nn.logical_to_mesh(specs, rules)
  unboxed = nn.unbox(abstract_tree)
  return jax.tree.map(lambda s, a: NamedSharding(mesh, _fit(s, a.shape, mesh)), mesh_specs,
                      unboxed, is_leaf=lambda x: isinstance(x, P))


def put_global(tree: Any, shardings: Any) -> Any:
  """Places host values (identical on every process) on the mesh with the given shardings."""
  return jax.tree.map(
      lambda x, s: jax.make_array_from_callback(np.shape(x), s, lambda idx: np.asarray(x)[idx]),
      tree, shardings)
