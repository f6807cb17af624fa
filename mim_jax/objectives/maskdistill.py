"""MaskDistill: a BEiT-style student inpaints the teacher's normalised features at masked patches.

The student sees every patch (dense inpainting input, `ViT(images, mask=...)`): block-masked
patches (40%) are replaced by a learnable mask token, with BEiT's shared relative position bias,
layer scale and initialisation. A linear head maps its final (normed) tokens to the teacher's
width. The target is the teacher's last block output, before the teacher's final norm, normalised
per token without affine (LayerNorm); the loss is smooth-L1 averaged over the masked patches.

Options (the paper's tables, `config.objective`):
  target_layers  "last" | "last3" | "last6": the teacher block output, or the mean of the last 3
                 / 6 block outputs (averaged raw, then normalised once).
  target_norm    "ln" (LayerNorm, no affine, per token) | "bn" (BatchNorm, no affine: each
                 channel standardised by its mean and variance over every token of the batch) |
                 "l2" (unit vectors) | "none".
  loss           "smooth_l1" (beta `beta`) | "mse" | "cosine" (1 - cos per token).
  loss_on        "masked": mean over masked patches | "all": mean over all N patches. CLS is
                 never in the loss. `mask.ratio = 0` (or `mask.kind = "none"`) with "all" is
                 plain feature knowledge distillation (the paper's Table 5).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mim_jax import allowed
from mim_jax.models import layers
from mim_jax.models.vit import BEIT_STD, ViT
from mim_jax.objectives import common
from mim_jax.objectives import evaluators

F32 = jnp.float32
TARGET_LAYERS = {"last": 1, "last3": 3, "last6": 6}


class FeatureHead(nn.Module):
  """Linear student_dim -> teacher_dim on every token (BEiT's lm_head: trunc_normal(0.02))."""
  features: int
  weight_init: str = "beit"
  dtype: Any = F32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel_init = (layers.trunc_normal(BEIT_STD) if self.weight_init == "beit"
                   else nn.initializers.xavier_uniform())
    return layers.Dense(self.features, dtype=self.dtype, kernel_axes=("embed", "mlp"),
                        kernel_init=kernel_init, name="dense")(x)


class MaskDistillModel(nn.Module):
  """Dense inpainting student + head. Output: {"pred": [B, 1 + N, Dt]} (CLS first)."""
  student: ViT
  teacher_width: int

  @nn.compact
  def __call__(self, images: jax.Array, masks: Any, *, train: bool = False) -> dict:
    out, _ = self.student(images, mask=masks.mask, train=train)
    head = FeatureHead(self.teacher_width, self.student.weight_init, self.student.dtype,
                       name="head")
    return {"pred": head(out)}


def make_model(config: ml_collections.ConfigDict, teacher: Any) -> MaskDistillModel:
  return MaskDistillModel(student=common.make_student(config), teacher_width=teacher.width)


def batch_norm(x: jax.Array, eps: float = 1e-5) -> jax.Array:
  """BatchNorm without affine on [B, L, D]: per channel, statistics over all B * L tokens."""
  x = x.astype(F32)
  mean = x.mean(axis=(0, 1), keepdims=True)
  var = jnp.square(x - mean).mean(axis=(0, 1), keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps)


def targets(hidden_states: tuple, layers_kind: str, norm: str) -> jax.Array:
  """Teacher hidden states (embedding output, then each block's) -> target [B, 1 + N, Dt].

  The chosen block outputs are averaged, then normalised once, so every `target_layers` option
  gives targets of the same scale.
  """
  if layers_kind not in TARGET_LAYERS:
    raise ValueError(f"Unknown target_layers {layers_kind!r}: use one of "
                     f"{sorted(TARGET_LAYERS)}.")
  k = TARGET_LAYERS[layers_kind]
  blocks = hidden_states[1:]
  if k > len(blocks):
    raise ValueError(f"target_layers={layers_kind!r} needs {k} teacher blocks, the teacher has "
                     f"{len(blocks)}.")
  x = jnp.mean(jnp.stack([b.astype(F32) for b in blocks[-k:]]), axis=0)
  if norm == "bn":
    return batch_norm(x)
  return common.normalize_target(x, norm)


TOKEN_LOSSES = ("smooth_l1", "mse", "cosine")
LOSS_ON = ("masked", "all")


def token_loss(pred: jax.Array, target: jax.Array, kind: str, beta: float) -> jax.Array:
  """Per-token loss [B, N]: element losses averaged over channels, or 1 - cos."""
  if kind not in TOKEN_LOSSES:
    raise ValueError(f"Unknown loss {kind!r}: use one of {TOKEN_LOSSES}.")
  per = common.regression_loss(pred, target, kind, beta=beta)
  return per if kind == "cosine" else per.mean(-1)


def loss_weights(mask: jax.Array, loss_on: str) -> jax.Array:
  """[B, N] weights of the patches in the loss: the mask itself, or ones."""
  if loss_on == "masked":
    return mask.astype(F32)
  if loss_on == "all":
    return jnp.ones(mask.shape, F32)
  raise ValueError(f"Unknown loss_on {loss_on!r}: use one of {LOSS_ON}.")


def loss_fn(out: dict, teacher_out: dict, masks: Any, batch: dict,
            config: ml_collections.ConfigDict) -> tuple[jax.Array, dict]:
  """Mean of the per-token loss over the weighted patches (CLS excluded)."""
  del batch
  obj = config.objective
  target = targets(teacher_out["hidden_states"], obj.target_layers, obj.target_norm)[:, 1:]
  per_token = token_loss(out["pred"][:, 1:], target, obj.loss, obj.beta)  # [B, N]
  w = loss_weights(masks.mask, obj.loss_on)
  # max(., 1): a batch with nothing masked gives 0, not NaN.
  loss = jnp.sum(per_token * w) / jnp.maximum(jnp.sum(w), 1.0)
  visible = 1.0 - masks.mask.astype(F32)
  metrics = {
      "loss/visible": jnp.sum(per_token * visible) / jnp.maximum(jnp.sum(visible), 1.0),
      "mask_fraction": masks.mask.astype(F32).mean(),
  }
  return loss, metrics


# The run's periodic evaluation (kNN of the student's features); nothing measured before step 1.
evaluate = evaluators.student_knn
prepare_state = common.keep_state


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      target_layers="last", target_norm="ln", loss="smooth_l1", beta=1.0, loss_on="masked"))


ALLOWED = {
    "target_layers": allowed.one_of(*TARGET_LAYERS),
    "target_norm": allowed.one_of(*common.TARGET_NORMS),
    "loss": allowed.one_of(*TOKEN_LOSSES),
    "beta": allowed.number(gt=0),
    "loss_on": allowed.one_of(*LOSS_ON),
}
