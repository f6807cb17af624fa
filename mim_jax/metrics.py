"""Metric writing (TensorBoard + JSONL, process 0 only) and progress with ETA."""
from __future__ import annotations

import json
import math
import time
from typing import Mapping, Optional

import jax
from absl import logging
from clu import metric_writers
from etils import epath


class Writer:
  """Scalars to TensorBoard (clu) and to `metrics.jsonl`, one JSON object per written step."""

  def __init__(self, workdir: str):
    self.active = jax.process_index() == 0
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
