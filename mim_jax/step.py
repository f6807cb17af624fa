"""The train state, its born-sharded initialisation, and the one jitted train step.

The same step serves every method: teacher forward (frozen, stop_gradient) -> masks ->
student + heads (the objective's model) -> objective loss -> AdamW update. The teacher's
parameters are an argument of the step, never part of the state or the optimizer.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mim_jax import masking
from mim_jax import sharding as sharding_lib
from mim_jax import teachers
from mim_jax.models import layers, platforms

PyTree = Any

# Named scopes of the step's parts: they prefix the op_name metadata of every HLO instruction
# traced inside (the backward pass's as "transpose(jvp(<scope>))"), which is how
# `mim_jax.hlo_cost` tells where an op of the compiled step comes from.
SCOPES = {"teacher": "teacher_forward", "masks": "masks", "student": "student",
          "loss": "loss", "optimizer": "optimizer"}


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: number of updates applied
  params: PyTree
  opt_state: PyTree


@dataclasses.dataclass(frozen=True)
class Setup:
  """What the step needs besides arrays; built once per run."""
  config: ml_collections.ConfigDict
  model: nn.Module
  objective: Any  # module with loss_fn
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  mesh: Mesh
  # mim_jax.teachers.Teacher (static), or a tuple of them for several teachers (joint
  # mimicking); the params travel apart, as the step's teacher argument (a tuple for several).
  teacher: Optional[Any] = None

  @property
  def num_patches(self) -> int:
    return self.model_student().num_patches

  def model_student(self):
    return getattr(self.model, "student", self.model)

  @property
  def target_platform(self) -> str:
    """The platform the step is compiled for: "tpu" for a TPU topology even when JAX itself
    runs on the CPU (ahead-of-time compilation), else "cpu" or "gpu"."""
    return self.mesh.devices.flat[0].platform

  @property
  def platform_ops(self) -> layers.PlatformOps:
    """The platform-specific layer code the step runs (`platforms.select`: the single-CPU-device
    layout for one CPU device while `config.cpu_matmul_layout`, else the portable ops)."""
    return platforms.select(self.target_platform, self.mesh.devices.size, self.config)

  @functools.cached_property
  def state_layout(self) -> tuple["TrainState", "TrainState"]:
    """(abstract state, its shardings); see `state_shardings`."""
    return _state_layout(self)


def _mask_kind(config) -> str:
  return config.mask.kind if config.get("mask") else "none"


def dummy_masks(setup: Setup, batch: int) -> masking.Masks:
  """Masks of the right static shapes for `init` and ahead-of-time compilation."""
  n = setup.num_patches
  kind = _mask_kind(setup.config)
  if kind == "none":
    return masking.no_masks(batch, n)
  return masking.random_masks(jax.random.key(0), batch, n, setup.config.mask.ratio)


def _init_params(setup: Setup, rng: jax.Array, batch: int = 2) -> PyTree:
  size = setup.config.data.image_size
  images = jnp.zeros((batch, size, size, 3), jnp.float32)
  variables = setup.model.init({"params": rng, "dropout": rng}, images,
                               dummy_masks(setup, batch), train=False)
  return variables["params"]


def state_shardings(setup: Setup) -> tuple[TrainState, TrainState]:
  """(abstract unboxed state, its shardings). Parameters follow the logical rules; optimizer
  moments follow their parameters; scalars are replicated. Traced once per Setup: restore,
  init and the jitted step all ask for it."""
  return setup.state_layout


def _state_layout(setup: Setup) -> tuple[TrainState, TrainState]:
  boxed = jax.eval_shape(lambda r: _init_params(setup, r), jax.random.key(0))
  param_sh = sharding_lib.logical_shardings(boxed, setup.mesh)
  params = nn.unbox(boxed)
  opt_state = jax.eval_shape(setup.tx.init, params)
  repl = sharding_lib.replicated(setup.mesh)
  opt_sh = optax.tree_map_params(setup.tx, lambda _, s: s, opt_state, param_sh,
                                 transform_non_params=lambda _: repl)
  abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                        opt_state=opt_state)
  return abstract, TrainState(step=repl, params=param_sh, opt_state=opt_sh)


def init_state(setup: Setup, rng: jax.Array) -> TrainState:
  """Parameters are born sharded: `jit(init, out_shardings=...)` never materialises them on
  one device."""
  _, shardings = state_shardings(setup)

  def init(r):
    params = nn.unbox(_init_params(setup, r))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=setup.tx.init(params))

  with jax.set_mesh(setup.mesh), nn.logical_axis_rules(sharding_lib.LOGICAL_RULES):
    return jax.jit(init, out_shardings=shardings)(rng)


def attention_teacher(setup: Setup, teacher_out: Any) -> tuple[Any, dict]:
  """(teacher, its outputs) whose attention drives attentive / focused masks: the only one, or
  of several the `teacher.attention_from`-th (default the first)."""
  if isinstance(setup.teacher, tuple):
    k = setup.config.teacher.get("attention_from", 0)
    return setup.teacher[k], teacher_out[k]
  return setup.teacher, teacher_out


def compute_masks(setup: Setup, rng: jax.Array, batch: dict, teacher_out: Any
                  ) -> masking.Masks:
  config = setup.config
  kind = _mask_kind(config)
  importance = None
  if kind in ("attentive", "focused"):
    teacher, out = attention_teacher(setup, teacher_out)
    importance = masking.cls_attention_importance(out["attn"][teacher.depth - 1])
  return masking.make_masks(
      kind, rng, batch=batch["image"].shape[0], num_patches=setup.num_patches,
      ratio=config.mask.get("ratio", 0.0) if kind != "none" else 0.0,
      importance=importance, binary=batch.get("mask"))


def teacher_forward(setup: Setup, teacher_params: PyTree, images: jax.Array) -> Any:
  """The teacher's outputs (a dict; a tuple of dicts for several teachers), no gradient. Each
  teacher returns its last attention layer when the masks need one (XLA drops those that no
  mask reads)."""
  if setup.teacher is None:
    return None
  needs_attn = _mask_kind(setup.config) in ("attentive", "focused")

  def one(teacher, params):
    out = teacher.apply(params, images, attn_layers=(teacher.depth - 1,) if needs_attn else ())
    return jax.lax.stop_gradient(out)
  with jax.named_scope(SCOPES["teacher"]):
    return teachers.map_teachers(one, setup.teacher, teacher_params)


def train_step(setup: Setup, state: TrainState, teacher_params: PyTree, batch: dict
               ) -> tuple[TrainState, dict]:
  """One update. batch: {"image": [B, H, W, 3] float32, optional "mask": [B, N]}."""
  with layers.use_platform_ops(setup.platform_ops):
    return _train_step(setup, state, teacher_params, batch)


def _loss_and_grads(setup: Setup, params: PyTree, teacher_params: PyTree, batch: dict,
                    rng: jax.Array) -> tuple[tuple[jax.Array, dict], PyTree]:
  """((loss, metrics), grads) of one (micro-)batch: teacher, masks, student, objective."""
  rng_mask, rng_drop = jax.random.split(rng)
  teacher_out = teacher_forward(setup, teacher_params, batch["image"])
  with jax.named_scope(SCOPES["masks"]):
    masks = compute_masks(setup, rng_mask, batch, teacher_out)

  def loss_of(p):
    with jax.named_scope(SCOPES["student"]):
      out = setup.model.apply({"params": p}, batch["image"], masks, train=True,
                              rngs={"dropout": rng_drop})
    with jax.named_scope(SCOPES["loss"]):
      return setup.objective.loss_fn(out, teacher_out, masks, batch, setup.config)

  return jax.value_and_grad(loss_of, has_aux=True)(params)


def micro_batches(batch: dict, k: int, mesh: Mesh) -> dict:
  """[B, ...] -> [k, B / k, ...]: micro-batch i holds examples i, i + k, i + 2k, ..., so each
  device's rows split evenly over the micro-batches and no example moves between devices."""
  def split(x):
    y = jnp.swapaxes(x.reshape((x.shape[0] // k, k) + x.shape[1:]), 0, 1)
    spec = P(None, sharding_lib.BATCH_AXES, *([None] * (x.ndim - 1)))
    return jax.lax.with_sharding_constraint(y, NamedSharding(mesh, spec))
  return jax.tree.map(split, batch)


def accumulate_steps(config) -> int:
  return int(config.optim.get("accumulate_steps", 1))


def _train_step(setup: Setup, state: TrainState, teacher_params: PyTree, batch: dict
                ) -> tuple[TrainState, dict]:
  rng = jax.random.fold_in(jax.random.key(setup.config.seed), state.step)
  k = accumulate_steps(setup.config)
  if k == 1:
    (loss, metrics), grads = _loss_and_grads(setup, state.params, teacher_params, batch, rng)
  else:  # the mean over k micro-batches, one at a time: activations of B / k examples live
    def body(total, xs):
      i, micro = xs
      out = _loss_and_grads(setup, state.params, teacher_params, micro,
                            jax.random.fold_in(rng, i))
      return jax.tree.map(lambda a, b: a + (b / k).astype(a.dtype), total, out), None

    micro = micro_batches(batch, k, setup.mesh)
    zeros = jax.eval_shape(functools.partial(_loss_and_grads, setup), state.params,
                           teacher_params, jax.tree.map(lambda x: x[0], micro), rng)
    zeros = jax.tree.map(
        lambda s: jnp.zeros(s.shape, jnp.result_type(s.dtype, jnp.float32)), zeros)
    (loss, metrics), grads = jax.lax.scan(body, zeros, (jnp.arange(k), micro))[0]
  with jax.named_scope(SCOPES["optimizer"]):
    updates, opt_state = setup.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, loss=loss, lr=setup.schedule(state.step),
                   grad_norm=optax.global_norm(grads), param_norm=optax.global_norm(params),
                   update_norm=update_norm(params, state.params))
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def update_norm(new_params: PyTree, old_params: PyTree) -> jax.Array:
  """The l2 norm of what a step changed in the stored parameters (new - old).

  Not `optax.global_norm(updates)`: the two differ only by the float32 rounding of
  `params + updates`, but reading the updates a second time keeps them in HBM between the
  optimizer's passes (XLA's bytes of a ViT-B AdamW update: 5.47 GB with, 4.09 GB without, on
  TPU; docs/tpu_cost.md), while the difference fuses with the parameter update itself.
  """
  return optax.global_norm(jax.tree.map(lambda a, b: a - b, new_params, old_params))


def batch_shardings(mesh: Mesh, batch_spec: dict) -> dict:
  """Every batch entry is split over (data, fsdp) along its leading axis."""
  return {k: sharding_lib.batch_sharding(mesh, len(v.shape)) for k, v in batch_spec.items()}


def jit_train_step(setup: Setup, batch_spec: dict, teacher_shardings: PyTree = None
                   ) -> Callable[[TrainState, PyTree, dict], tuple[TrainState, dict]]:
  """The jitted step with shardings fixed and the state donated.

  Call it inside `with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES)`, or use the
  returned wrapper, which enters them for you.
  """
  _, state_sh = state_shardings(setup)
  repl = sharding_lib.replicated(setup.mesh)
  jitted = jax.jit(
      lambda s, t, b: train_step(setup, s, t, b),
      in_shardings=(state_sh, teacher_shardings if teacher_shardings is not None else repl,
                    batch_shardings(setup.mesh, batch_spec)),
      out_shardings=(state_sh, repl), donate_argnums=(0,))

  def run(state, teacher_params, batch):
    with jax.set_mesh(setup.mesh), nn.logical_axis_rules(sharding_lib.LOGICAL_RULES):
      return jitted(state, teacher_params, batch)

  run.jitted = jitted
  return run
