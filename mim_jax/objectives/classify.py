"""Supervised classification: the fine-tuning path (and the demo's own teacher).

Student ViT on all patches (no teacher, no masking) + a linear head on a pooled feature:

  pool="avg" (MAE fine-tuning, the default): mean of the patch tokens of the last block's output
             (the residual stream, CLS excluded), then a LayerNorm `fc_norm`; the student's own
             final `norm` is unused, as in MAE, where it is removed when pooling globally.
  pool="cls": the CLS token after the student's final `norm` (transformers'
             `ViTForImageClassification`, timm's global_pool="token").

Loss: softmax cross-entropy against label-smoothed one-hot targets (`(1 - s) * onehot + s / C`),
averaged over the valid rows of the batch (`batch["valid"]` when present). With `mixup`/`cutmix`
alphas set, training batches are mixed inside the model (one lambda per batch, partner = the
batch reversed, timm's "batch" mode) and the targets are mixed with the same lambda.

Parameters: {"student": ViT params, "head": {"kernel" [D, C], "bias" [C]}, and "fc_norm":
{"scale", "bias"} [D] for pool="avg"}. `head_params(params)` returns everything but the student:
the `head` argument of `mim_jax.export`.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from mim_jax import allowed
from mim_jax.models import layers
from mim_jax.models.vit import ViT
from mim_jax.objectives import common
from mim_jax.objectives import evaluators

F32 = jnp.float32
POOLS = ("avg", "cls")


def pool_features(out: jax.Array, last_block: jax.Array, pool: str) -> jax.Array:
  """The feature a head sees, [B, D].

  out: final-normed tokens [B, 1 + N, D]; last_block: the last block's output [B, 1 + N, D]
  (before the final norm). "cls": out[:, 0]; "avg": mean of last_block's patch tokens (the
  caller applies fc_norm).
  """
  if pool == "cls":
    return out[:, 0]
  if pool == "avg":
    return last_block[:, 1:].mean(axis=1)
  raise ValueError(f"Unknown pool {pool!r}: use one of {POOLS}.")


def _beta(rng: jax.Array, alpha: float) -> jax.Array:
  return jax.random.beta(rng, alpha, alpha).astype(F32)


def cutmix_box(rng: jax.Array, lam: jax.Array, height: int, width: int
               ) -> tuple[jax.Array, jax.Array]:
  """A box covering about 1 - lam of the image, centre uniform, clipped at the borders.

  Returns (inside [H, W] bool, corrected lam = 1 - box area / image area), timm's rule.
  """
  cut = jnp.sqrt(1.0 - lam)
  ch, cw = jnp.floor(height * cut), jnp.floor(width * cut)
  ky, kx = jax.random.split(rng)
  cy = jax.random.randint(ky, (), 0, height).astype(F32)
  cx = jax.random.randint(kx, (), 0, width).astype(F32)
  y0, y1 = jnp.clip(cy - ch // 2, 0, height), jnp.clip(cy + ch // 2, 0, height)
  x0, x1 = jnp.clip(cx - cw // 2, 0, width), jnp.clip(cx + cw // 2, 0, width)
  ys = jnp.arange(height, dtype=F32)[:, None]
  xs = jnp.arange(width, dtype=F32)[None, :]
  inside = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)
  lam = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)
  return inside, lam


def mix_batch(rng: jax.Array, images: jax.Array, mixup_alpha: float, cutmix_alpha: float,
              switch_prob: float = 0.5) -> tuple[jax.Array, jax.Array]:
  """Mixup or CutMix of a batch with itself reversed. images [B, H, W, C] -> (mixed, lam []).

  One lambda per batch. With both alphas > 0, CutMix is chosen with probability `switch_prob`.
  The targets must be mixed as lam * y + (1 - lam) * y[::-1].
  """
  if mixup_alpha <= 0 and cutmix_alpha <= 0:
    return images, jnp.ones((), F32)
  k_switch, k_mix, k_cut, k_box = jax.random.split(rng, 4)
  partner = images[::-1]
  _, h, w, _ = images.shape
  mixed_lam = _beta(k_mix, mixup_alpha) if mixup_alpha > 0 else jnp.ones((), F32)
  mixed = mixed_lam * images + (1.0 - mixed_lam) * partner
  if cutmix_alpha <= 0:
    return mixed, mixed_lam
  inside, cut_lam = cutmix_box(k_box, _beta(k_cut, cutmix_alpha), h, w)
  cut = jnp.where(inside[None, :, :, None], partner, images)
  if mixup_alpha <= 0:
    return cut, cut_lam
  use_cut = jax.random.uniform(k_switch) < switch_prob
  return jnp.where(use_cut, cut, mixed), jnp.where(use_cut, cut_lam, mixed_lam)


class Classifier(nn.Module):
  """Student + pooled linear head. Output: {"logits": [B, C] float32, "mix_lam": []}.

  `masks` is accepted for the shared train step and ignored: fine-tuning sees every patch.
  """
  student: ViT
  num_classes: int
  pool: str = "avg"
  head_init_std: float = 2e-5  # MAE fine-tuning: trunc_normal(std=2e-5), bias 0
  mixup: float = 0.0
  cutmix: float = 0.0
  mix_switch_prob: float = 0.5

  @nn.compact
  def __call__(self, images: jax.Array, masks: Any = None, *, train: bool = False) -> dict:
    del masks
    lam = jnp.ones((), F32)
    if train and (self.mixup > 0 or self.cutmix > 0):
      images, lam = mix_batch(self.make_rng("dropout"), images, self.mixup, self.cutmix,
                              self.mix_switch_prob)
    out, aux = self.student(images, None, train=train)
    feats = pool_features(out, aux["blocks"][-1], self.pool)
    if self.pool == "avg":
      feats = layers.LayerNorm(1e-6, name="fc_norm")(feats)
    logits = layers.Dense(self.num_classes, dtype=self.student.dtype,
                          kernel_axes=("embed", "vocab"),
                          kernel_init=layers.trunc_normal(self.head_init_std), name="head")(feats)
    return {"logits": logits, "mix_lam": lam}


def head_params(params: Mapping[str, Any]) -> dict[str, Any]:
  """The classifier's parameters without the student: {"head": ..., "fc_norm"?: ...}."""
  return {k: v for k, v in params.items() if k != "student"}


TEACHER = False  # supervised: labels, no teacher
MASKS = False  # every patch


def make_model(config: ml_collections.ConfigDict, teacher: Optional[Any]) -> Classifier:
  if teacher is not None or config.teacher.get("spec"):
    raise ValueError("method 'classify' trains without a teacher: set config.teacher.spec=None.")
  common.check_unmasked(config)
  obj = config.objective
  if obj.pool not in POOLS:
    raise ValueError(f"Unknown pool {obj.pool!r}: use one of {POOLS}.")
  return Classifier(student=common.make_student(config), num_classes=obj.num_classes,
                    pool=obj.pool, head_init_std=obj.head_init_std, mixup=obj.mixup,
                    cutmix=obj.cutmix, mix_switch_prob=obj.mix_switch_prob)


def smoothed_targets(labels: jax.Array, num_classes: int, smoothing: float) -> jax.Array:
  """labels [B] int -> [B, C]: (1 - s) * onehot + s / C. Label -1 (padding) gives s / C rows."""
  return optax.smooth_labels(jax.nn.one_hot(labels, num_classes, dtype=F32), smoothing)


def loss_fn(out: dict, teacher_out: Any, masks: Any, batch: dict,
            config: ml_collections.ConfigDict) -> tuple[jax.Array, dict]:
  """Label-smoothed softmax cross-entropy over the valid rows; metrics: accuracy, ce."""
  del teacher_out, masks
  obj = config.objective
  logits = out["logits"].astype(F32)
  labels = batch["label"]
  targets = smoothed_targets(labels, obj.num_classes, obj.label_smoothing)
  lam = out.get("mix_lam", jnp.ones((), F32))
  targets = lam * targets + (1.0 - lam) * targets[::-1]
  weights = batch["valid"].astype(F32) if "valid" in batch else jnp.ones(labels.shape, F32)
  count = jnp.maximum(weights.sum(), 1.0)
  loss = (optax.softmax_cross_entropy(logits, targets) * weights).sum() / count
  # Unsmoothed, unmixed cross-entropy and top-1 accuracy against the batch's own labels.
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels, 0))
  correct = (jnp.argmax(logits, -1) == labels).astype(F32)
  metrics = {"accuracy": (correct * weights).sum() / count, "ce": (ce * weights).sum() / count}
  return loss, metrics


# The run's periodic evaluation (top-1 / top-5 on data.eval_split); nothing to measure
# before step 1.
evaluate = evaluators.classifier_accuracy
prepare_state = common.keep_state


def default_config() -> ml_collections.ConfigDict:
  """`config.objective` of "classify"; mixup/cutmix alphas 0 = off (MAE fine-tune: 0.8 / 1.0)."""
  return ml_collections.ConfigDict(dict(
      num_classes=1000, pool="avg", label_smoothing=0.1, head_init_std=2e-5,
      mixup=0.0, cutmix=0.0, mix_switch_prob=0.5))


ALLOWED = {
    "num_classes": allowed.integer(ge=1),
    "pool": allowed.one_of(*POOLS),
    "label_smoothing": allowed.number(ge=0, lt=1),
    "head_init_std": allowed.number(ge=0),
    "mixup": allowed.number(ge=0, note="a Beta alpha; 0: off"),
    "cutmix": allowed.number(ge=0, note="a Beta alpha; 0: off"),
    "mix_switch_prob": allowed.number(ge=0, le=1),
}
