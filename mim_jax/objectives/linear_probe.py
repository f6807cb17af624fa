"""Linear probe as a run (MAE's protocol): a frozen student in eval mode, BatchNorm without
affine (eps 1e-6) on its pooled feature, a linear head; only the head learns (LARS).

Parameters: {"student": frozen (stop_gradient, and no update: `optim.frozen`),
"probe_norm_mean", "probe_norm_var" [D], also frozen, "head": {"kernel" [D, C], "bias" [C]}}.

The BatchNorm normalises with the training split's feature mean and variance, measured once
before the first step (`prepare_state`, one pass over `data.split` in the eval view) and saved
with the run. MAE's BatchNorm1d uses per-batch statistics while training and its running
averages (of augmented images) at test time; with a frozen encoder both converge to the split's
statistics, so this differs only by the batch noise (see `evaluation/linear_probe.py`).

Features: `objective.pool` "cls" (MAE's default: the CLS token after the final norm) or "mean"
(the patch tokens' mean). Loss and metrics: `classify.loss_fn` (label smoothing 0 in MAE's
recipe); evaluation: top-1 / top-5 like fine-tuning (`evaluators.classifier_accuracy`).
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mim_jax import allowed
from mim_jax.data import input_pipeline
from mim_jax.evaluation import features
from mim_jax.evaluation import linear_probe as probe_lib
from mim_jax.models import layers
from mim_jax.models.vit import ViT
from mim_jax.objectives import classify
from mim_jax.objectives import common
from mim_jax.objectives import evaluators

FROZEN = ("student", "probe_norm_mean", "probe_norm_var")


class LinearProbeModel(nn.Module):
  """Output: {"logits": [B, C] float32}. `masks` and `train` do not change the encoder."""
  student: ViT
  num_classes: int
  pool: str = "cls"

  @nn.compact
  def __call__(self, images: jax.Array, masks: Any = None, *, train: bool = False) -> dict:
    del masks, train
    out, _ = self.student(images, None, train=False)
    feats = jax.lax.stop_gradient(features.pool_tokens(out, self.pool).astype(jnp.float32))
    width = feats.shape[-1]
    norm = {"mean": self.param("probe_norm_mean", nn.initializers.zeros, (width,), jnp.float32),
            "var": self.param("probe_norm_var", nn.initializers.ones, (width,), jnp.float32)}
    x = probe_lib.batchnorm(feats, jax.lax.stop_gradient(norm["mean"]),
                            jax.lax.stop_gradient(norm["var"]))
    logits = layers.Dense(self.num_classes, kernel_axes=("embed", "vocab"),
                          kernel_init=layers.trunc_normal(0.01), name="head")(x)
    return {"logits": logits}


TEACHER = False  # a head on a frozen encoder, no teacher
MASKS = False  # every patch


def make_model(config: ml_collections.ConfigDict, teacher: Optional[Any]) -> LinearProbeModel:
  if teacher is not None or config.teacher.get("spec"):
    raise ValueError("method 'linear_probe' trains without a teacher: set "
                     "config.teacher.spec=None.")
  common.check_unmasked(config)
  if tuple(config.optim.get("frozen") or ()) != FROZEN:
    raise ValueError(f"method 'linear_probe' trains the head only: set "
                     f"config.optim.frozen={FROZEN}.")
  obj = config.objective
  features.check_pool(obj.pool)
  return LinearProbeModel(student=common.make_student(config, drop_path=0.0),
                          num_classes=obj.num_classes, pool=obj.pool)


def loss_fn(out: dict, teacher_out: Any, masks: Any, batch: dict,
            config: ml_collections.ConfigDict) -> tuple[jax.Array, dict]:
  return classify.loss_fn(out, teacher_out, masks, batch, config)


# The run's periodic evaluation: top-1 / top-5 on data.eval_split, like fine-tuning.
evaluate = evaluators.classifier_accuracy


def feature_statistics(setup: Any, student_params: Any) -> tuple[np.ndarray, np.ndarray]:
  """Mean and variance [D] of the frozen student's pooled features over `data.split`."""
  config = setup.config
  encoder = features.encoder_fn(setup.model_student(), pool=config.objective.pool,
                                normalize=False)
  iterator = input_pipeline.make_eval_iterator(config.data, mesh=setup.mesh,
                                               split=config.data.split,
                                               global_batch_size=config.eval.batch_size)
  feats, _ = features.extract_features(encoder, student_params, iterator)
  feats = feats.astype(np.float64)
  return feats.mean(0).astype(np.float32), feats.var(0).astype(np.float32)


def prepare_state(setup: Any, state: Any) -> Any:
  """The fresh state with the BatchNorm's statistics measured (after `init_from`)."""
  mean, var = feature_statistics(setup, state.params["student"])
  params = dict(state.params)
  for name, value in (("probe_norm_mean", mean), ("probe_norm_var", var)):
    params[name] = jax.device_put(value, state.params[name].sharding)
  return state.replace(params=params)


def default_config() -> ml_collections.ConfigDict:
  """`config.objective` of "linear_probe" (MAE: CLS feature, no label smoothing)."""
  return ml_collections.ConfigDict(dict(num_classes=1000, pool="cls", label_smoothing=0.0))


ALLOWED = {
    "num_classes": allowed.integer(ge=1),
    "pool": allowed.one_of(*features.POOLS),
    "label_smoothing": allowed.number(ge=0, lt=1),
}
