"""The one train loop: `train_and_evaluate(config, workdir)` for every method.

Order of work (big_vision's): the teacher is loaded first (a missing checkpoint fails before
anything is compiled or written), then the mesh, data, state (restored from the workdir's latest
checkpoint, else born sharded), then the loop. Periodic work (logging, checkpoints, kNN) runs when
`config.should_run` says so; metrics leave the device only then.
"""
from __future__ import annotations

import dataclasses
import functools
import signal
import threading
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from mim_jax import checkpoint as ckpt_lib
from mim_jax import config as config_lib
from mim_jax import init_from as init_from_lib
from mim_jax import metrics as metrics_lib
from mim_jax import objectives
from mim_jax.objectives import common as objective_common
from mim_jax import optim
from mim_jax import sharding as sharding_lib
from mim_jax import step as step_lib
from mim_jax import teachers
from mim_jax import validate
from mim_jax.data import block_mask
from mim_jax.data import input_pipeline
from mim_jax.evaluation import classification, features, knn
from mim_jax.models import vit as vit_lib


class NonFiniteLossError(FloatingPointError):
  pass


def load_teacher(config: ml_collections.ConfigDict) -> Any:
  """The frozen teacher matched to the student's grid, None for teacher-free methods, or a tuple
  of teachers when `teacher.spec` lists several (each with its own dtype, input size and
  position embedding resized to the student's grid)."""
  settings = objective_common.teacher_settings(config)
  if not settings:
    return None
  loaded = tuple(_load_one(config, spec, dtype) for spec, dtype in settings)
  return loaded if len(loaded) > 1 else loaded[0]


def _load_one(config: ml_collections.ConfigDict, spec: str, dtype: str) -> teachers.Teacher:
  if spec == "demo":  # the demo's own teacher, trained on first use by this same loop
    from mim_jax import demo  # pylint: disable=import-outside-toplevel
    spec = demo.ensure_teacher(runlocal=config.get("runlocal", False))
  teacher = teachers.load(spec, dtype=dtype)
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


def knn_eval(config: ml_collections.ConfigDict, mesh, encoder: Any, params: Any) -> float:
  """kNN top-1 (config.eval: k, temperature) of a frozen encoder `(params, images) -> [B, D]`:
  features of one eval pass over the train split, classified on `data.eval_split`."""
  iterators = [input_pipeline.make_eval_iterator(config.data, mesh=mesh, split=split,
                                                 global_batch_size=config.eval.batch_size)
               for split in (config.data.split, config.data.eval_split)]
  return knn.knn_evaluate(encoder, params, *iterators, k=config.eval.knn_k,
                          temperature=config.eval.knn_temperature)["knn/top1"]


def evaluate(setup: step_lib.Setup, params: Any) -> dict[str, float]:
  """The run's periodic evaluation: top-1 / top-5 of a classifier on `data.eval_split`
  ("eval/top1", "eval/top5"), else kNN top-1 of the student's features ("knn/top1")."""
  config = setup.config
  if config.method in ("classify", "linear_probe"):
    def logits(p, images):
      return setup.model.apply({"params": p}, images, None, train=False)["logits"]
    iterator = input_pipeline.make_eval_iterator(config.data, mesh=setup.mesh,
                                                 global_batch_size=config.eval.batch_size)
    return classification.accuracy(logits, params, iterator)
  encoder = features.encoder_fn(setup.model_student(), pool=config.eval.pool)
  return {"knn/top1": knn_eval(config, setup.mesh, encoder, params["student"])}


class Trace:
  """The `config.profile` trace: started before step `first_step` runs, stopped (after the
  device finished) once `num_steps` steps ran, or when the loop ends. Every host writes its own."""

  def __init__(self, profile: ml_collections.ConfigDict, workdir: str):
    self.first, self.num = int(profile.first_step), int(profile.num_steps)
    self.logdir, self.running = str(epath.Path(workdir) / "profile"), False

  def before(self, step: int) -> None:
    if self.num > 0 and step == self.first:
      jax.profiler.start_trace(self.logdir, create_perfetto_trace=True)
      self.running = True

  def after(self, done: int, outputs: Any) -> None:
    if self.running and done >= self.first + self.num:
      self.stop(outputs)

  def stop(self, outputs: Any = None) -> None:
    if self.running:
      jax.block_until_ready(outputs)
      jax.profiler.stop_trace()
      self.running = False
      logging.info("Profile of steps %d-%d written to %s", self.first + 1,
                   self.first + self.num, self.logdir)


class StopRequest:
  """SIGINT/SIGTERM set a flag instead of killing the loop mid-step: the loop then writes a
  checkpoint of the last finished step and returns (a second signal kills as usual).

  Single process only: on several hosts a flag one host sees a step before another would leave
  the other waiting in a collective; there JAX's preemption service (through orbax's
  `reached_preemption`, agreed across hosts) decides the stopping step.
  """

  def __init__(self, enabled: bool = True):
    self.enabled = enabled
    self.requested = False
    self._previous = {}

  def __enter__(self):
    if self.enabled and threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGINT, signal.SIGTERM):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.requested = True
    logging.warning("Signal %d: stopping after this step with a checkpoint.", signum)
    signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _check_finite(step: int, scalars: dict, mngr) -> None:
  bad = {k: v for k, v in scalars.items() if not np.isfinite(v)}
  if bad:
    last = mngr.latest_step()
    where = (f"the last good checkpoint is step {last} in {mngr.directory}" if last is not None
             else "no checkpoint was written yet")
    raise NonFiniteLossError(f"Non-finite metrics at step {step}: {bad}; {where}. Lower the "
                             f"learning rate or check the data, then resume from it.")


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


def _restack_state(state: Any, starts: tuple[int, ...]) -> Any:
  """`state` with every student parameter tree in it (the parameters, the optimizer's moments)
  in the block layout `starts` (`vit.restack`)."""
  def is_params(x):
    return isinstance(x, dict) and isinstance(x.get("student"), dict)
  return jax.tree.map(
      lambda x: {**x, "student": vit_lib.restack(x["student"], starts)} if is_params(x) else x,
      state, is_leaf=is_params)


def restore_any_layout(mngr, abstract: step_lib.TrainState, shardings: step_lib.TrainState):
  """`checkpoint.restore_latest`, also from a checkpoint written with the other `student.scan`
  (or another split of the scanned stack): it is read in its own block layout, with the target
  shardings moved to it, and restacked on the devices into the layout of `abstract`."""
  student = abstract.params.get("student") if isinstance(abstract.params, dict) else None
  names = ckpt_lib.names_under(mngr, ("params", "student")) if student is not None else None
  wanted, written = vit_lib.stack_starts(student or {}), vit_lib.stack_starts(names or ())
  if not any(map(vit_lib.is_block_name, names or ())) or written == wanted:
    return ckpt_lib.restore_latest(mngr, abstract, shardings)
  source = _restack_state(ckpt_lib.abstract_with_shardings(abstract, shardings), written)
  step, state, data = ckpt_lib.restore_latest(
      mngr, source, jax.tree.map(lambda a: a.sharding, source))
  if state is not None:
    state = jax.jit(functools.partial(_restack_state, starts=wanted),
                    out_shardings=shardings)(state)
    logging.warning("Checkpoint step %d holds the student's blocks %s; restacked them %s for "
                    "this run's student.scan.", step, _layout_name(written),
                    _layout_name(wanted))
  return step, state, data


def _layout_name(starts: tuple[int, ...]) -> str:
  return (f"scanned (stacks from blocks {', '.join(map(str, starts))})" if starts
          else "unscanned (block{i})")


@dataclasses.dataclass
class Result:
  """What a finished run leaves in memory: the final state and what built it."""
  state: step_lib.TrainState
  setup: step_lib.Setup
  teacher_params: Any
  scalars: dict[str, float]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Result:
  """Trains `config` in `workdir`, resuming from its latest checkpoint (a finished run is only
  restored)."""
  validate.check(config, workdir)  # workdir, mesh and batch problems: before any work
  teacher = load_teacher(config)  # bad teacher or data input fails before anything is written
  features.check_pool(config.eval.pool)
  if config.get("init_from"):
    init_from_lib.check(config.init_from)  # a bad source, too
  mesh = sharding_lib.make_mesh(config.mesh)
  total_steps, warmup_steps = durations(config, input_pipeline.num_examples(config.data))
  setup = make_setup(config, teacher, mesh, total_steps, warmup_steps)
  loaded = load_init_from(config, setup, workdir)
  # epath: a local directory or a gs:// one (a pod's hosts share no disk), as orbax's own paths.
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:
    (epath.Path(workdir) / "config.json").write_text(config.to_json_best_effort(indent=2))

  mngr = ckpt_lib.manager(workdir, keep=config.keep_checkpoints,
                          asynchronous=config.async_checkpoint)
  abstract, shardings = step_lib.state_shardings(setup)
  start, state, data_pos = restore_any_layout(mngr, abstract, shardings)
  if state is None:
    start, state = 0, step_lib.init_state(setup, jax.random.key(config.seed))
    if loaded is not None:
      state = init_student(state, shardings, loaded)
    if hasattr(setup.objective, "prepare_state"):  # e.g. the linear probe's feature statistics
      state = setup.objective.prepare_state(setup, state)
  else:
    logging.info("Resumed from step %d in %s", start, mngr.directory)

  t_params, t_sh = None, None
  if teacher is not None:
    t_sh = teacher_shardings(teacher, mesh)
    t_params = jax.device_put(teacher_params(teacher), t_sh)

  student = setup.model_student()
  data = input_pipeline.make_pretrain_iterator(
      config.data, global_batch_size=config.batch_size, mesh=mesh, seed=config.seed,
      start_step=start, mask_fn=mask_fn(config, student.grid),
      position=input_pipeline.host_position(data_pos), augment=config.get("augment"))
  writer = metrics_lib.Writer(workdir, start)
  results = classification.read_results(workdir)
  progress = metrics_lib.Progress(total_steps, config.batch_size, start)
  train_step = None
  trace = Trace(config.profile, workdir)
  last: dict[str, float] = {}
  with StopRequest(enabled=jax.process_count() == 1) as stop:
    try:
      for step in range(start, total_steps):
        batch = next(data)
        if train_step is None:
          train_step = step_lib.jit_train_step(setup, batch, t_sh)
        trace.before(step)
        state, metrics = train_step(state, t_params, batch)
        done = step + 1
        trace.after(done, metrics)
        if step == start:
          jax.block_until_ready(metrics)
          progress.first_step_done()
          logging.info("First step (compile + run) took %.1fs", progress.compile_s)
        # A signal, or a pod's preemption notice (orbax syncs it so that every host sees it at
        # the same step), ends the run here with a checkpoint.
        stopping = stop.requested or mngr.reached_preemption(done)
        log_now = config_lib.should_run(done, config.log_every, total_steps)
        ckpt_now = stopping or config_lib.should_run(done, config.checkpoint_every, total_steps)
        if log_now or ckpt_now:  # metrics leave the device only here
          scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
          _check_finite(done, scalars, mngr)
        evals = {}
        if config_lib.should_run(done, config.eval.get("every"), total_steps):
          evals = evaluate(setup, state.params)
          logging.info("step %d %s", done, ", ".join(f"{k} {v:.4f}" for k, v in evals.items()))
          results = classification.update_results(results, done, evals, resumed_from=start)
          classification.write_results(workdir, results)
        if log_now:
          scalars.update(progress.update(done), **{"data/skipped_images": data.num_skipped()})
          if progress.compile_s is not None:
            scalars["perf/compile_s"] = progress.compile_s
          metrics_lib.log_line(done, total_steps, scalars)
          last = scalars = {**scalars, **evals}
        if log_now or evals:  # one record per step
          writer.write(done, scalars if log_now else evals)
        if ckpt_now:
          ckpt_lib.save(mngr, done, state, data=input_pipeline.gather_positions(data))
        if stopping:
          logging.warning("Stopped at step %d; the same command resumes from it.", done)
          break
    finally:
      trace.stop(state)
      mngr.wait_until_finished()
      writer.close()
  return Result(state=state, setup=setup, teacher_params=t_params, scalars=last)
