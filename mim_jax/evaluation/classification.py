"""Supervised evaluation of a classifier run: top-1 / top-5 over one pass of an eval split, and
the run's `results.json`.

`accuracy` runs a logits function over a deterministic eval iterator (`input_pipeline.
make_eval_iterator`); padded rows (valid=False) count neither as right nor as seen. The counts are
summed on the devices, so with several hosts every host gets the same global numbers.

`results.json` in the workdir: {"step": last evaluated step, "final": {name: value},
"best": {name: {"value": v, "step": s}}}, best = the highest value of each name so far; it is
rewritten after every evaluation, so an interrupted run keeps what it measured.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Iterable, Mapping, Optional

import jax
import jax.numpy as jnp
from etils import epath

LogitsFn = Callable[[Any, jax.Array], jax.Array]
RESULTS_FILE = "results.json"


def correct_counts(logits: jax.Array, labels: jax.Array, valid: jax.Array,
                   ks: tuple[int, ...] = (1, 5)) -> dict[str, jax.Array]:
  """{"top{k}": rows whose label is among the k largest logits, "count": valid rows}, summed
  over the valid rows of the batch. k above the number of classes counts every valid row."""
  valid = valid.astype(jnp.float32)
  # rank of the true class = number of classes scoring strictly higher than it
  true = jnp.take_along_axis(logits, jnp.maximum(labels, 0)[:, None], axis=-1)
  rank = (logits > true).sum(-1)
  out = {f"top{k}": ((rank < k).astype(jnp.float32) * valid).sum() for k in ks}
  out["count"] = valid.sum()
  return out


def accuracy(logits_fn: LogitsFn, params: Any, iterator: Iterable[Mapping[str, Any]],
             prefix: str = "eval/") -> dict[str, float]:
  """{prefix + "top1", prefix + "top5"}: fractions of the iterator's valid examples."""
  @jax.jit
  def counts(p, batch):
    return correct_counts(logits_fn(p, batch["image"]).astype(jnp.float32), batch["label"],
                          batch["valid"])

  total: dict[str, float] = {}
  for batch in iterator:
    for k, v in jax.device_get(counts(params, batch)).items():
      total[k] = total.get(k, 0.0) + float(v)
  if not total.get("count"):
    raise ValueError("The eval iterator yielded no valid example.")
  return {f"{prefix}{k}": total[k] / total["count"] for k in total if k != "count"}


def read_results(workdir: str) -> Optional[dict]:
  path = epath.Path(workdir) / RESULTS_FILE
  return json.loads(path.read_text()) if path.exists() else None


def update_results(previous: Optional[dict], step: int, values: Mapping[str, float],
                   resumed_from: Optional[int] = None) -> dict:
  """`previous` results (or None) after an evaluation at `step`. `resumed_from`: the step this
  attempt of the run started from; bests an earlier attempt measured after it are forgotten
  (they will be measured again)."""
  best = dict(previous.get("best", {})) if previous else {}
  if resumed_from is not None:
    best = {k: v for k, v in best.items() if v["step"] <= resumed_from}
  for name, value in values.items():
    if name not in best or value > best[name]["value"]:
      best[name] = {"value": float(value), "step": int(step)}
  return {"step": int(step), "final": {k: float(v) for k, v in values.items()}, "best": best}


def write_results(workdir: str, results: Mapping[str, Any]) -> None:
  if jax.process_index() == 0:
    (epath.Path(workdir) / RESULTS_FILE).write_text(json.dumps(results, indent=2, sort_keys=True)
                                                    + "\n")

