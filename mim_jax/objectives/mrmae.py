"""MR-MAE (mimic before reconstruct): MAE whose encoder also mimics a frozen teacher.

The student encodes [CLS, visible patches] (25% visible, r = 0.75). Two heads read the encoder's
features E [B, 1 + n, D]:
  mimic head   Linear D -> Dt on the visible patch tokens, L2 against the teacher's features of
               the same patches (hidden_states[-1] by default, i.e. the last block before the
               final norm; or "final", after it), each normalised per token ("ln", no affine,
               eps 1e-5) or not ("none"), then gathered at `ids_keep`;
  decoder      MAE's pixel decoder, reconstructing the masked 75% exactly as `mae` does
               (same target switches: norm_pix, global_norm, stats_path).
Loss = mimic_weight * mimic + recon_weight * recon (0.5 / 0.5). Both terms are means of squared
errors over elements (the mimic one over the n visible tokens x Dt channels, as MAE's reconstruction
term is over masked patches x pixels), so the two weights compare like with like. (The paper's
Eq. 1-2 write squared norms per token; MAE's code, which it builds on, averages over pixels: the
factor Dt would only rescale the mimic weight.)

Switches from the paper's bag of tricks:
  focused mimicking  `config.mask.kind = "focused"`: the visible tokens are the top 25% patches
                     by the teacher's last-layer CLS attention (deterministic top-k,
                     `masking.focused_masks`).
                     The paper contrasts it with MAE's random *selection of visible tokens* and
                     picks "the most salient tokens ... for visible feature mimicking", so focused
                     changes which tokens are visible (and hence which the decoder reconstructs),
                     and every visible token enters the mimic loss. (`mask.kind = "attentive"` is
                     the stochastic, MILAN-like alternative. The other reading, random visible
                     tokens with the mimic loss on their top-k only, is not offered: the step
                     asks the teacher for attention only when the masking needs it.)
  multi-layer fusion `objective.fusion_layers = (i, j, ...)`: E = LayerNorm(sum of the residual
                     streams after encoder blocks i, j, ...) replaces the encoder's output for
                     BOTH heads ("utilize the fused ones for high-level feature mimicking and
                     low-level pixel reconstruction"); the sum runs over all tokens incl. CLS.
                     The LayerNorm is the fusion's own (eps 1e-6): the residual streams are
                     pre-norm, and their sum needs one norm as the single last block's output
                     gets the encoder's. Empty tuple: off (E = the encoder's normed output).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mim_jax.models import layers
from mim_jax.models.decoder import Decoder
from mim_jax.models.vit import ViT, gather_tokens
from mim_jax.objectives import common
from mim_jax.objectives import mae

F32 = jnp.float32
TARGET_LAYERS = ("last", "final")


def fuse(blocks: Sequence[jax.Array], fusion_layers: Sequence[int]) -> jax.Array:
  """Element-wise sum of the chosen blocks' outputs, each [B, L, D] -> [B, L, D]."""
  return sum(blocks[i] for i in fusion_layers)


class MRMAEModel(nn.Module):
  """Student + mimic head + pixel decoder.

  Output: {"mimic": [B, 1 + n, Dt] (CLS first, then the visible patches in `ids_keep` order),
  "pred": [B, N, p*p*3]}.
  """
  student: ViT
  decoder: Decoder
  teacher_width: int
  fusion_layers: tuple[int, ...] = ()

  @nn.compact
  def __call__(self, images: jax.Array, masks: Any, *, train: bool = False) -> dict:
    latent, aux = self.student(images, masks.ids_keep, train=train)
    if self.fusion_layers:
      latent = layers.LayerNorm(1e-6, name="fusion_norm")(
          fuse(aux["blocks"], self.fusion_layers))
    mimic = layers.Dense(self.teacher_width, dtype=self.student.dtype,
                         kernel_axes=("embed", "mlp"), name="mimic_head")(latent)
    return {"mimic": mimic, "pred": self.decoder(latent, masks.ids_restore, train=train)}


def fusion_indices(layers_: Sequence[int], depth: int) -> tuple[int, ...]:
  """Block indices in [0, depth) (negative ones count from the end), checked and deduplicated."""
  out = []
  for i in layers_:
    if not -depth <= int(i) < depth:
      raise ValueError(f"fusion layer {i} is outside the student's {depth} blocks.")
    j = int(i) % depth
    if j not in out:
      out.append(j)
  return tuple(sorted(out))


def make_model(config: ml_collections.ConfigDict, teacher: Any) -> MRMAEModel:
  if teacher is None:
    raise ValueError("MR-MAE mimics a teacher: set config.teacher.spec (e.g. 'clip_b16').")
  obj = config.objective
  if obj.target_layer not in TARGET_LAYERS:
    raise ValueError(f"Unknown target_layer {obj.target_layer!r}; use one of {TARGET_LAYERS}.")
  mae.check_config(config)
  student = common.make_student(config)
  return MRMAEModel(student=student, decoder=mae.make_decoder(config, student),
                    teacher_width=teacher.width,
                    fusion_layers=fusion_indices(obj.fusion_layers, student.depth))


def mimic_targets(teacher_out: dict, ids_keep: jax.Array, target_layer: str, norm: str
                  ) -> jax.Array:
  """Teacher features [B, 1 + N, Dt] -> normalised per token -> [CLS, patches at ids_keep],
  [B, 1 + n, Dt]."""
  hidden = (teacher_out["hidden_states"][-1] if target_layer == "last"
            else teacher_out["final"])
  hidden = common.normalize_target(hidden, norm)
  return jnp.concatenate([hidden[:, :1], gather_tokens(hidden[:, 1:], ids_keep)], axis=1)


def mimic_loss(pred: jax.Array, target: jax.Array, with_cls: bool) -> jax.Array:
  """Mean squared error over tokens and channels; pred, target [B, 1 + n, Dt], CLS first."""
  if not with_cls:
    pred, target = pred[:, 1:], target[:, 1:]
  return jnp.square(pred.astype(F32) - target).mean()


def loss_fn(out: dict, teacher_out: dict, masks: Any, batch: dict,
            config: ml_collections.ConfigDict) -> tuple[jax.Array, dict]:
  obj = config.objective
  num_teacher = teacher_out["hidden_states"][-1].shape[1] - 1
  num_student = masks.ids_restore.shape[1]
  if num_teacher != num_student:
    raise ValueError(f"teacher has {num_teacher} patch tokens, student {num_student}: the "
                     "mimic loss pairs them one to one (match the grids, Teacher.for_student).")
  target = mimic_targets(teacher_out, masks.ids_keep, obj.target_layer, obj.target_norm)
  mimic = mimic_loss(out["mimic"], target, obj.mimic_cls)
  recon = mae.reconstruction_loss(out["pred"], batch["image"], masks.mask, config)
  loss = obj.mimic_weight * mimic + obj.recon_weight * recon
  return loss, {"loss/mimic": mimic, "loss/recon": recon}


def default_config() -> ml_collections.ConfigDict:
  c = mae.recon_config()
  c.mimic_weight = 0.5
  c.recon_weight = 0.5
  c.target_layer = "last"  # "last": hidden_states[-1] (pre final norm) | "final": after it
  c.target_norm = "ln"     # "ln" | "none" (the paper does not say; LN as MaskAlign/FD do)
  c.mimic_cls = False      # the paper mimics the visible patch tokens only
  c.fusion_layers = ()     # encoder block indices whose outputs are summed; () = off
  return c
