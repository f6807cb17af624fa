"""The periodic evaluation of a run, chosen by its objective: each objective module names one of
these as its `evaluate(setup, params) -> {name: value}` (`setup`: the run's `step.Setup`,
`params`: the train state's parameters).

  student_knn          kNN top-1 of the student's frozen features ("knn/top1"): what the
                       pretraining objectives report
  classifier_accuracy  top-1 / top-5 of the run's classifier on `data.eval_split`
                       ("eval/top1", "eval/top5"): classify, linear_probe
  knn_top1             the kNN protocol for any frozen encoder (the demo's rows use it too)
"""
from __future__ import annotations

from typing import Any

import ml_collections

from mim_jax.data import input_pipeline
from mim_jax.evaluation import classification, features, knn


def knn_top1(config: ml_collections.ConfigDict, mesh, encoder: features.EncoderFn,
             params: Any) -> float:
  """kNN top-1 (config.eval: k, temperature) of a frozen encoder `(params, images) -> [B, D]`:
  features of one eval pass over the train split, classified on `data.eval_split`."""
  iterators = [input_pipeline.make_eval_iterator(config.data, mesh=mesh, split=split,
                                                 global_batch_size=config.eval.batch_size)
               for split in (config.data.split, config.data.eval_split)]
  return knn.knn_evaluate(encoder, params, *iterators, k=config.eval.knn_k,
                          temperature=config.eval.knn_temperature)["knn/top1"]


def student_knn(setup: Any, params: Any) -> dict[str, float]:
  """{"knn/top1"}: kNN of the student's features (`eval.pool`) of `params["student"]`."""
  encoder = features.encoder_fn(setup.model_student(), pool=setup.config.eval.pool)
  return {"knn/top1": knn_top1(setup.config, setup.mesh, encoder, params["student"])}


def classifier_accuracy(setup: Any, params: Any) -> dict[str, float]:
  """{"eval/top1", "eval/top5"}: the run's model's logits over one pass of `data.eval_split`."""
  def logits(p, images):
    return setup.model.apply({"params": p}, images, None, train=False)["logits"]
  iterator = input_pipeline.make_eval_iterator(setup.config.data, mesh=setup.mesh,
                                               global_batch_size=setup.config.eval.batch_size)
  return classification.accuracy(logits, params, iterator)
