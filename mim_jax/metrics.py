"""Metric writing (TensorBoard + JSONL, process 0 only) and progress with ETA.

Exactly once per step across resumes: a run resumed at step s first drops the records of steps
after s from `metrics.jsonl` (the killed run wrote them before its last checkpoint, or never
finished the line), and starts TensorBoard's events with a restart marker (a SessionLog START at
s + 1) by which TensorBoard discards the earlier files' events of those steps.
"""
from __future__ import annotations

import json
import math
import socket
import time
from typing import Mapping, Optional

import jax
from absl import logging
from clu import metric_writers
from etils import epath


class Writer:
  """Scalars to TensorBoard (clu) and to `metrics.jsonl`, one JSON object per written step."""

  def __init__(self, workdir: str, start_step: int = 0):
    self.active = jax.process_index() == 0
    if self.active and truncate_jsonl(epath.Path(workdir) / "metrics.jsonl", start_step):
      mark_restart(workdir, start_step)
    self._tb = metric_writers.create_default_writer(workdir, just_logging=not self.active,
                                                    asynchronous=True)
    # epath: local or gs:// workdirs alike (appending to a GCS object rewrites it; small here).
    self._jsonl = ((epath.Path(workdir) / "metrics.jsonl").open("a") if self.active else None)

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    scalars = {k: float(v) for k, v in scalars.items()}
    self._tb.write_scalars(step, scalars)
    if self._jsonl:
      self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
      self._jsonl.flush()

  def close(self) -> None:
    self._tb.flush()
    self._tb.close()
    if self._jsonl:
      self._jsonl.close()


def truncate_jsonl(path: epath.Path, last_step: int) -> int:
  """Keeps the records of steps <= `last_step` in the JSONL file `path` (a torn last line is
  dropped too), rewritten atomically; returns how many records were dropped."""
  if not path.exists():
    return 0
  kept, dropped = [], 0
  for line in path.read_text().splitlines():
    try:
      keep = json.loads(line)["step"] <= last_step
    except (ValueError, KeyError, TypeError):
      keep = False
    if keep:
      kept.append(line + "\n")
    else:
      dropped += 1
  if dropped:
    tmp = path.parent / (path.name + ".tmp")
    tmp.write_text("".join(kept))
    tmp.replace(path)
    logging.info("Resuming at step %d: dropped %d later records from %s", last_step, dropped,
                 path)
  return dropped


def mark_restart(workdir: str, step: int) -> None:
  """An events file holding only SessionLog STARTs at `step + 1`: TensorBoard purges the
  events of steps > `step` read from files before it (its purge of orphaned data; TensorBoard
  takes the first START of a run for the initial one, hence two). TensorBoard reads a run's
  files in name order: this name is stamped a second back, after the killed run's files and
  before the new run's."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from tensorboard.compat.proto import event_pb2  # pylint: disable=import-outside-toplevel
  now = time.time()
  name = f"events.out.tfevents.{int(now) - 1:010d}.{socket.gethostname()}.restart"
  start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
  with tf.io.TFRecordWriter(str(epath.Path(workdir) / name)) as f:
    f.write(event_pb2.Event(wall_time=now, file_version="brain.Event:2").SerializeToString())
    for _ in range(2):
      f.write(event_pb2.Event(step=step + 1, wall_time=now, session_log=start)
              .SerializeToString())


class Progress:
  """Steps/s, images/s and ETA from the wall time between log points; the first interval
  (which includes compilation) is reported separately as `compile_s`."""

  def __init__(self, total_steps: int, global_batch: int, start_step: int):
    self.total, self.batch = total_steps, global_batch
    self._last_step, self._last_time = start_step, time.perf_counter()
    self._start = self._last_time
    self.compile_s: Optional[float] = None

  def first_step_done(self) -> None:
    """Call after the first step's results are on the host."""
    now = time.perf_counter()
    self.compile_s = now - self._start
    self._last_time = now
    self._last_step += 1

  def update(self, step: int) -> dict[str, float]:
    now = time.perf_counter()
    steps = step - self._last_step
    if steps <= 0:
      return {}
    rate = steps / max(now - self._last_time, 1e-9)
    self._last_step, self._last_time = step, now
    return {"perf/steps_per_s": rate, "perf/images_per_s": rate * self.batch,
            "perf/eta_s": (self.total - step) / rate}


def format_eta(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


def log_line(step: int, total: int, scalars: Mapping[str, float]) -> None:
  keys = ("loss", "lr", "grad_norm", "perf/steps_per_s", "perf/images_per_s")
  parts = [f"{k.split('/')[-1]}={scalars[k]:.4g}" for k in keys if k in scalars]
  if "perf/eta_s" in scalars:
    parts.append(f"eta={format_eta(scalars['perf/eta_s'])}")
  logging.info("step %d/%d %s", step, total, " ".join(parts))
