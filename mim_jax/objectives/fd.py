"""Feature Distillation (FD): regress the teacher's whitened output features from a clean image.

No masking: the student sees all patches (`mask.kind = "none"`). A linear head (FD's 1x1 conv)
maps the student's final normed tokens to the teacher's width. The target is the teacher's last
block output AFTER its final norm (`teacher_out["final"]`), "whitened" by a LayerNorm without
affine (eps 1e-5); the loss is smooth-L1 with beta 2.0, averaged over every element of every
token, CLS included.

Options (`config.objective`): target_norm ("ln" | "bn" | "l2" | "none", see
`maskdistill.targets`), loss ("smooth_l1" | "mse" | "cosine"), beta, with_cls. The student's
relative position bias, layer scale and init are `config.student` fields (FD's code: shared
relative position bias, no absolute embedding, layer scale 0.1).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mim_jax import allowed
from mim_jax.models.vit import ViT
from mim_jax.objectives import common
from mim_jax.objectives import evaluators
from mim_jax.objectives import maskdistill

F32 = jnp.float32


class FDModel(nn.Module):
  """Full-sequence student + linear head. Output: {"pred": [B, 1 + N, Dt]} (CLS first)."""
  student: ViT
  teacher_width: int

  @nn.compact
  def __call__(self, images: jax.Array, masks: Any = None, *, train: bool = False) -> dict:
    del masks  # FD never masks
    out, _ = self.student(images, train=train)
    head = maskdistill.FeatureHead(self.teacher_width, self.student.weight_init,
                                   self.student.dtype, name="head")
    return {"pred": head(out)}


MASKS = False  # FD distils from the clean image


def make_model(config: ml_collections.ConfigDict, teacher: Any) -> FDModel:
  common.check_unmasked(config)
  return FDModel(student=common.make_student(config), teacher_width=teacher.width)


def target(final: jax.Array, norm: str) -> jax.Array:
  """Teacher output after its final norm [B, 1 + N, Dt] -> whitened target, same shape."""
  if norm == "bn":
    return maskdistill.batch_norm(final)
  return common.normalize_target(final, norm)


def loss_fn(out: dict, teacher_out: dict, masks: Any, batch: dict,
            config: ml_collections.ConfigDict) -> tuple[jax.Array, dict]:
  del masks, batch
  obj = config.objective
  pred, tgt = out["pred"], target(teacher_out["final"], obj.target_norm)
  if not obj.with_cls:
    pred, tgt = pred[:, 1:], tgt[:, 1:]
  per_token = maskdistill.token_loss(pred, tgt, obj.loss, obj.beta)  # [B, L]
  metrics = {"loss/cls": per_token[:, 0].mean()} if obj.with_cls else {}
  return per_token.mean(), metrics


# The run's periodic evaluation (kNN of the student's features); nothing measured before step 1.
evaluate = evaluators.student_knn
prepare_state = common.keep_state


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      target_norm="ln", loss="smooth_l1", beta=2.0, with_cls=True))


ALLOWED = {
    "target_norm": allowed.one_of(*common.TARGET_NORMS),
    "loss": allowed.one_of(*maskdistill.TOKEN_LOSSES),
    "beta": allowed.number(gt=0),
    "with_cls": allowed.flag(),
}
