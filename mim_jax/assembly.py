"""Assembling a run from its config: what the train loop, the AOT compiler, the analysis CLI, the
benchmarks and the demo build the same way.

  load_teacher(config, abstract=False)   the frozen teacher(s) matched to the student's grid
  place_teacher(teacher, mesh)           (its params on the mesh, their shardings)
  make_setup(config, teacher, mesh, total_steps, warmup_steps)   model, objective, optimizer
  durations(config, num_train_examples)  (total_steps, warmup_steps)
  mask_fn(config, grid)                  host-side block masks, or None
  assemble(config, workdir)              all of the above for a run, checked before anything
                                         is written
  start_state(setup, mngr, init_weights) the state a run starts from: its latest checkpoint (in
                                         either scan layout), else fresh (+ init_from)

Teacher specs reach this module resolved: a name of the zoo or a checkpoint directory.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from mim_jax import config as config_lib
from mim_jax import init_from as init_from_lib
from mim_jax import objectives
from mim_jax import optim
from mim_jax import sharding as sharding_lib
from mim_jax import step as step_lib
from mim_jax import teachers
from mim_jax import validate
from mim_jax.convert import scan
from mim_jax.data import block_mask
from mim_jax.data import input_pipeline
from mim_jax.evaluation import features
from mim_jax.models import platforms


# ---- the teacher ------------------------------------------------------------------------------
def load_teacher(config: ml_collections.ConfigDict, *, abstract: bool = False) -> Any:
  """The frozen teacher matched to the student's grid, None for teacher-free methods, or a tuple
  of teachers when `teacher.spec` lists several (each with its own dtype, input size and
  position embedding resized to the student's grid).

  abstract: the same teachers with `jax.ShapeDtypeStruct` parameters, from each checkpoint's
  config.json alone (`teachers.load(abstract=True)`): what ahead-of-time compilation needs.
  """
  settings = objectives.teacher_settings(config)
  if not settings:
    return None
  loaded = tuple(_load_one(config, spec, dtype, abstract) for spec, dtype in settings)
  return loaded if len(loaded) > 1 else loaded[0]


def _load_one(config: ml_collections.ConfigDict, spec: str, dtype: str, abstract: bool
              ) -> teachers.Teacher:
  teacher = teachers.load(spec, dtype=dtype, abstract=abstract)
  _, patch = config_lib.decode_variant(config.student.variant)
  grid = teachers.teacher.student_grid(config.data.image_size, patch, teacher.grid)
  if grid != teacher.grid and not config.teacher.get("resize_to_student", True):
    raise ValueError(f"teacher grid {teacher.grid}x{teacher.grid} vs student grid {grid}x{grid}"
                     f": set teacher.resize_to_student=True to resize the teacher's input and "
                     f"position embedding, or change data.image_size / student.variant.")
  return teacher.for_student(config.data.image_size, patch)


def teacher_shardings(teacher: Any, mesh) -> Any:
  """The teacher's parameters follow the same logical rules as the student's (a tuple of
  shardings for several teachers, one per teacher)."""
  def one(t: teachers.Teacher):
    size = t.image_size
    boxed = jax.eval_shape(
        lambda: teachers.TeacherNet(t.arch).init(jax.random.key(0),
                                                 jnp.zeros((1, size, size, 3)))["params"])
    return sharding_lib.logical_shardings(boxed, mesh)
  return teachers.map_teachers(one, teacher)


def teacher_params(teacher: Any) -> Any:
  """What the step takes as its teacher argument: the params (a tuple of them for several)."""
  return teachers.map_teachers(lambda t: t.params, teacher)


def place_teacher(teacher: Any, mesh) -> tuple[Any, Any]:
  """(the teacher's params placed on `mesh`, their shardings); (None, None) without a teacher."""
  if teacher is None:
    return None, None
  shardings = teacher_shardings(teacher, mesh)
  return jax.device_put(teacher_params(teacher), shardings), shardings


# ---- the run's pieces -------------------------------------------------------------------------
def durations(config: ml_collections.ConfigDict, num_train_examples: int) -> tuple[int, int]:
  """(total_steps, warmup_steps) from steps / epochs / examples / percent fields."""
  steps_per_epoch = max(num_train_examples // config.batch_size, 1)
  total = config_lib.steps_from(config, "total", steps_per_epoch=steps_per_epoch,
                                batch_size=config.batch_size)
  if total is None:
    raise ValueError("Set config.total_steps or config.total_epochs.")
  warmup = config_lib.steps_from(config, "warmup", steps_per_epoch=steps_per_epoch,
                                 batch_size=config.batch_size, total_steps=total, default=0)
  return total, warmup


def make_setup(config: ml_collections.ConfigDict, teacher: Any, mesh,
               total_steps: int, warmup_steps: int) -> step_lib.Setup:
  objective = objectives.get(config.method)
  schedule = optim.make_schedule(config.optim, total_steps=total_steps,
                                 warmup_steps=warmup_steps, global_batch=config.batch_size)
  return step_lib.Setup(config=config, model=objective.make_model(config, teacher),
                        objective=objective, tx=optim.make_optimizer(config.optim, schedule),
                        schedule=schedule, mesh=mesh, teacher=teacher)


def mask_fn(config: ml_collections.ConfigDict, grid: tuple[int, int]):
  """Host-side block masks for `mask.kind == "block"`, else None."""
  if config.mask.kind != "block":
    return None
  return functools.partial(block_mask.block_masks, grid=grid, ratio=config.mask.ratio)


@dataclasses.dataclass(frozen=True)
class Assembly:
  """A run's pieces, built and checked before anything is written."""
  setup: step_lib.Setup
  total_steps: int
  init_weights: Optional[dict]  # the student weights of `init_from` (host numpy), or None


def assemble(config: ml_collections.ConfigDict, workdir: str) -> Assembly:
  """Checks the config, loads the teacher (a bad teacher or data input fails here), builds the
  mesh and setup, reads `init_from`: every input problem stops the run before it writes."""
  validate.check(config, workdir)  # workdir, mesh and batch problems: before any work
  config = platforms.for_target(config, jax.devices()[0].platform)  # precision "auto"
  teacher = load_teacher(config)
  features.check_pool(config.eval.pool)
  if config.get("init_from"):
    init_from_lib.check(config.init_from)  # a bad source, too
  mesh = sharding_lib.make_mesh(config.mesh)
  total_steps, warmup_steps = durations(config, input_pipeline.num_examples(config.data))
  setup = make_setup(config, teacher, mesh, total_steps, warmup_steps)
  return Assembly(setup=setup, total_steps=total_steps,
                  init_weights=load_init_from(config, setup, workdir))


# ---- init_from ---------------------------------------------------------------------------------
def load_init_from(config: ml_collections.ConfigDict, setup: step_lib.Setup, workdir: str
                   ) -> Optional[dict]:
  """The student weights of `config.init_from` (host numpy), or None (no init_from, or the
  workdir resumes). Read and mapped before anything is written: a shape that cannot be mapped or
  a missing tensor stops the run in one line."""
  if not config.get("init_from") or init_from_lib.has_checkpoint(workdir):
    return None
  abstract, _ = step_lib.state_shardings(setup)
  return init_from_lib.load_student(config.init_from, abstract.params["student"],
                                    setup.model_student())


def init_student(state: step_lib.TrainState, shardings: step_lib.TrainState, loaded: dict
                 ) -> step_lib.TrainState:
  """`state` with params["student"] = `loaded` (see `load_init_from`), placed with the state's
  own shardings; the optimizer state is untouched (fresh)."""
  placed = jax.device_put(loaded, shardings.params["student"])
  return state.replace(params=dict(state.params, student=placed))


# ---- the state a run starts from ---------------------------------------------------------------
def start_state(setup: step_lib.Setup, mngr, init_weights: Optional[dict]
                ) -> tuple[int, step_lib.TrainState, Any]:
  """(step, state, the input pipeline's saved position or None): restored from the latest
  checkpoint of `mngr`, in either block layout (`convert.scan.restore_any_layout`), else fresh
  from `config.seed`, with the `init_from` weights and the objective's `prepare_state`."""
  abstract, shardings = step_lib.state_shardings(setup)
  start, state, data_pos = scan.restore_any_layout(mngr, abstract, shardings)
  if state is not None:
    logging.info("Resumed from step %d in %s", start, mngr.directory)
    return start, state, data_pos
  state = step_lib.init_state(setup, jax.random.key(setup.config.seed))
  if init_weights is not None:
    state = init_student(state, shardings, init_weights)
  return 0, setup.objective.prepare_state(setup, state), data_pos
