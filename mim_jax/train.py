"""The one train loop: `train_and_evaluate(config, workdir)` for every method.

Order of work (big_vision's): the run is assembled first (`assembly.assemble`: the config
checked, the teacher loaded, the mesh and model built; a missing checkpoint fails before anything
is compiled or written), then the state (restored from the workdir's latest checkpoint, else born
sharded), the data, then the loop. Periodic work (logging, checkpoints, the objective's
evaluation) runs when `config.should_run` says so; metrics leave the device only then.
"""
from __future__ import annotations

import dataclasses
import signal
import threading
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from mim_jax import assembly
from mim_jax import checkpoint as ckpt_lib
from mim_jax import config as config_lib
from mim_jax import metrics as metrics_lib
from mim_jax import step as step_lib
from mim_jax.data import input_pipeline
from mim_jax.evaluation import classification


class NonFiniteLossError(FloatingPointError):
  pass


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


class Periodic:
  """The work after a step that runs at some steps only: metrics fetched, checked and logged, the
  objective's evaluation (with `results.json`), checkpoints. `last`: the last logged scalars."""

  def __init__(self, setup: step_lib.Setup, workdir: str, mngr, data, start: int, total: int):
    self.setup, self.workdir, self.mngr, self.data = setup, workdir, mngr, data
    self.start, self.total = start, total
    self.writer = metrics_lib.Writer(workdir, start)
    self.results = classification.read_results(workdir)
    self.progress = metrics_lib.Progress(total, setup.config.batch_size, start)
    self.last: dict[str, float] = {}

  def first_step_done(self, metrics: Any) -> None:
    jax.block_until_ready(metrics)
    self.progress.first_step_done()
    logging.info("First step (compile + run) took %.1fs", self.progress.compile_s)

  def __call__(self, done: int, state: step_lib.TrainState, metrics: Any, stopping: bool
               ) -> None:
    config = self.setup.config
    log_now = config_lib.should_run(done, config.log_every, self.total)
    ckpt_now = stopping or config_lib.should_run(done, config.checkpoint_every, self.total)
    if log_now or ckpt_now:  # metrics leave the device only here
      scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
      _check_finite(done, scalars, self.mngr)
    evals = {}
    if config_lib.should_run(done, config.eval.get("every"), self.total):
      evals = self.evaluate(done, state.params)
    if log_now:
      scalars.update(self.progress.update(done),
                     **{"data/skipped_images": self.data.num_skipped()})
      if self.progress.compile_s is not None:
        scalars["perf/compile_s"] = self.progress.compile_s
      metrics_lib.log_line(done, self.total, scalars)
      self.last = {**scalars, **evals}
    if log_now or evals:  # one record per step
      self.writer.write(done, self.last if log_now else evals)
    if ckpt_now:
      ckpt_lib.save(self.mngr, done, state, data=input_pipeline.gather_positions(self.data))

  def evaluate(self, done: int, params: Any) -> dict[str, float]:
    """The objective's evaluation (`objectives`' `evaluate`), logged and kept in results.json."""
    evals = self.setup.objective.evaluate(self.setup, params)
    logging.info("step %d %s", done, ", ".join(f"{k} {v:.4f}" for k, v in evals.items()))
    self.results = classification.update_results(self.results, done, evals,
                                                 resumed_from=self.start)
    classification.write_results(self.workdir, self.results)
    return evals


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
  run = assembly.assemble(config, workdir)  # every input problem: before anything is written
  setup = run.setup
  # epath: a local directory or a gs:// one (a pod's hosts share no disk), as orbax's own paths.
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  ckpt_lib.write_run_config(workdir, config)
  mngr = ckpt_lib.manager(workdir, keep=config.keep_checkpoints,
                          asynchronous=config.async_checkpoint)
  start, state, data_pos = assembly.start_state(setup, mngr, run.init_weights)
  t_params, t_sh = assembly.place_teacher(setup.teacher, setup.mesh)
  data = input_pipeline.make_pretrain_iterator(
      config.data, global_batch_size=config.batch_size, mesh=setup.mesh, seed=config.seed,
      start_step=start, mask_fn=assembly.mask_fn(config, setup.model_student().grid),
      position=input_pipeline.host_position(data_pos), augment=config.get("augment"))
  periodic = Periodic(setup, workdir, mngr, data, start, run.total_steps)
  trace, train_step = Trace(config.profile, workdir), None
  with StopRequest(enabled=jax.process_count() == 1) as stop:
    try:
      for step in range(start, run.total_steps):
        batch = next(data)
        if train_step is None:
          train_step = step_lib.jit_train_step(setup, batch, t_sh)
        trace.before(step)
        state, metrics = train_step(state, t_params, batch)
        done = step + 1
        trace.after(done, metrics)
        if step == start:
          periodic.first_step_done(metrics)
        # A signal, or a pod's preemption notice (orbax syncs it so that every host sees it at
        # the same step), ends the run here with a checkpoint.
        stopping = stop.requested or mngr.reached_preemption(done)
        periodic(done, state, metrics, stopping)
        if stopping:
          logging.warning("Stopped at step %d; the same command resumes from it.", done)
          break
    finally:
      trace.stop(state)
      mngr.wait_until_finished()
      periodic.writer.close()
  return Result(state=state, setup=setup, teacher_params=t_params, scalars=periodic.last)
