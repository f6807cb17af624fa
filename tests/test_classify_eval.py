"""Supervised evaluation of a classify run: top-1 / top-5 on the eval split, results.json."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import finetune_b16
from mim_jax import train
from mim_jax.data import input_pipeline
from mim_jax.evaluation import classification


def np_topk(logits, labels, k):
  order = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
  return float((order == labels[:, None]).any(-1).mean())


def test_counts_match_numpy_and_skip_padding():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(37, 10)).astype(np.float32)
  labels = rng.integers(0, 10, 37).astype(np.int32)
  valid = np.arange(37) < 30
  labels[30:] = -1  # padding rows, as the eval iterator pads
  got = jax.device_get(classification.correct_counts(jnp.asarray(logits), jnp.asarray(labels),
                                                     jnp.asarray(valid)))
  assert got["count"] == 30
  for k in (1, 5):
    assert got[f"top{k}"] / 30 == pytest.approx(np_topk(logits[:30], labels[:30], k))
  # fewer classes than k: every valid row counts
  got = classification.correct_counts(jnp.asarray(logits[:, :3]), jnp.zeros(37, jnp.int32),
                                      jnp.asarray(valid))
  assert float(got["top5"]) == 30


def test_accuracy_over_batches_is_per_example():
  """Two batches of different valid counts: the mean over examples, not over batches."""
  logits = np.eye(4, dtype=np.float32)
  b1 = {"image": logits, "label": np.array([0, 1, 2, 3]), "valid": np.ones(4, bool)}
  b2 = {"image": logits, "label": np.array([1, -1, -1, -1]), "valid": np.array([1, 0, 0, 0], bool)}
  out = classification.accuracy(lambda p, x: x, None, [b1, b2])
  assert out["eval/top1"] == pytest.approx(4 / 5)


def test_results_keep_best_and_forget_steps_after_a_resume():
  r = classification.update_results(None, 10, {"eval/top1": 0.5})
  r = classification.update_results(r, 20, {"eval/top1": 0.4})
  assert r == {"step": 20, "final": {"eval/top1": 0.4},
               "best": {"eval/top1": {"value": 0.5, "step": 10}}}
  # resumed from step 5: the earlier attempt's step-10 best is not this run's
  r = classification.update_results(r, 10, {"eval/top1": 0.3}, resumed_from=5)
  assert r["best"]["eval/top1"] == {"value": 0.3, "step": 10}


def test_finetune_run_writes_top1_of_the_eval_split(tmp_path):
  c = finetune_b16.get_config("runlocal=True")
  c.total_steps, c.eval.every, c.async_checkpoint = 4, 2, False
  workdir = str(tmp_path)
  result = train.train_and_evaluate(c, workdir)
  results = json.loads(open(os.path.join(workdir, "results.json")).read())
  assert results["step"] == 4 and set(results["final"]) == {"eval/top1", "eval/top5"}
  assert results["best"]["eval/top1"]["step"] in (2, 4)
  # recomputed by hand over the 300 test digits
  model, params = result.setup.model, result.state.params
  logits, labels = [], []
  for batch in input_pipeline.make_eval_iterator(c.data, mesh=result.setup.mesh,
                                                 global_batch_size=c.eval.batch_size):
    keep = np.asarray(batch["valid"])
    out = model.apply({"params": params}, batch["image"], None, train=False)["logits"]
    logits.append(np.asarray(out)[keep]), labels.append(np.asarray(batch["label"])[keep])
  logits, labels = np.concatenate(logits), np.concatenate(labels)
  assert len(labels) == 300
  assert results["final"]["eval/top1"] == pytest.approx(np_topk(logits, labels, 1), abs=1e-6)
  assert results["final"]["eval/top5"] == pytest.approx(np_topk(logits, labels, 5), abs=1e-6)
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in records if "eval/top1" in r] == [2, 4]
