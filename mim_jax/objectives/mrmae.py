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

Several teachers ("joint" mimicking, the paper's Figure 4 "CLIP/DINO (Joint)"; `teacher.spec` a
comma-separated list): one mimic head per teacher (Linear D -> Dt_k; the first keeps the name
`mimic_head`, teacher k >= 1 gets `mimic_head_{k}`), each regressing its own teacher's features
normalised as above, and mimic = the SUM of the per-teacher terms (logged as loss/mimic_{k}),
every teacher at weight 1: the paper gives neither formula nor weights for the joint row, and a
sum keeps each teacher's term as strong as in its single-teacher run (mean would halve both).
Focused masks then follow the attention of teacher `teacher.attention_from` (default 0).

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
  multi-layer fusion E = the student's final LayerNorm of (the sum of the residual streams after
                     the fused blocks) replaces the encoder's output for BOTH heads ("utilize the
                     fused ones for high-level feature mimicking and low-level pixel
                     reconstruction"); the sum runs over all tokens incl. CLS. The fused blocks
                     are not given by the paper (no public code): `objective.num_fusion` = 3
                     blocks evenly spaced over the depth and ending at the last one (blocks
                     4, 8, 12 of B; 8, 16, 24 of L; 10, 21, 32 of H), or the explicit
                     `objective.fusion_layers`. The fused set must contain the last block (later
                     blocks would get no gradient), and the student's own final norm normalises
                     the sum, so every block and that norm, which kNN and export apply, are
                     trained. num_fusion = 1 or fusion_layers = () is plain MR-MAE.
"""
from __future__ import annotations

from typing import Any, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mim_jax import allowed
from mim_jax import teachers
from mim_jax.models import layers
from mim_jax.models.decoder import Decoder
from mim_jax.models.vit import ViT, gather_tokens
from mim_jax.objectives import common
from mim_jax.objectives import evaluators
from mim_jax.objectives import mae

F32 = jnp.float32
TARGET_LAYERS = ("last", "final")
SEVERAL_TEACHERS = True  # `teacher.spec` may list several teachers: joint mimicking


class MRMAEModel(nn.Module):
  """Student + mimic head + pixel decoder.

  Output: {"mimic": [B, 1 + n, Dt] (CLS first, then the visible patches in `ids_keep` order;
  a tuple of them, one per teacher, when `teacher_width` is a tuple), "pred": [B, N, p*p*3]}.
  """
  student: ViT
  decoder: Decoder
  teacher_width: Union[int, tuple[int, ...]]  # a tuple: one mimic head per teacher
  fusion_layers: tuple[int, ...] = ()

  @nn.compact
  def __call__(self, images: jax.Array, masks: Any, *, train: bool = False) -> dict:
    latent, _ = self.student(images, masks.ids_keep, train=train, fuse=self.fusion_layers)

    def head(width: int, k: int = 0) -> jax.Array:
      return layers.Dense(width, dtype=self.student.dtype, kernel_axes=("embed", "mlp"),
                          name=head_name(k))(latent)
    widths = self.teacher_width
    mimic = (tuple(map(head, widths, range(len(widths)))) if isinstance(widths, tuple)
             else head(widths))
    return {"mimic": mimic, "pred": self.decoder(latent, masks.ids_restore, train=train)}


def head_name(k: int) -> str:
  """The mimic head of teacher k: `mimic_head` for the first (and only), `mimic_head_{k}` after."""
  return "mimic_head" if k == 0 else f"mimic_head_{k}"


def spaced_layers(num: int, depth: int) -> tuple[int, ...]:
  """`num` block indices evenly spaced over `depth` blocks, the last one included:
  (3, 7, 11) for 3 of 12, (7, 15, 23) of 24, (9, 20, 31) of 32, (0, 1) of 2."""
  if num < 1:
    raise ValueError(f"num_fusion must be >= 1 (1 = the last block only, no fusion), got {num}.")
  return tuple(sorted({max(depth * (i + 1) // num - 1, 0) for i in range(num)}))


def fusion_indices(obj: ml_collections.ConfigDict, depth: int) -> tuple[int, ...]:
  """The fused blocks in [0, depth): `obj.fusion_layers` (negative ones count from the end)
  when set, else `spaced_layers(obj.num_fusion, depth)`; () when that is the last block alone
  (the plain encoder output)."""
  chosen = (spaced_layers(obj.num_fusion, depth) if obj.fusion_layers is None
            else obj.fusion_layers)
  out = set()
  for i in chosen:
    if not -depth <= int(i) < depth:
      raise ValueError(f"fusion layer {i} is outside the student's {depth} blocks.")
    out.add(int(i) % depth)
  if out and depth - 1 not in out:
    raise ValueError(f"fusion_layers {tuple(chosen)} leave out the last block ({depth - 1}): "
                     f"blocks after {max(out)} would get no gradient; add -1 or set "
                     "fusion_layers=None to derive them from num_fusion.")
  return () if out == {depth - 1} else tuple(sorted(out))


def make_model(config: ml_collections.ConfigDict, teacher: Any) -> MRMAEModel:
  if teacher is None:
    raise ValueError("MR-MAE mimics a teacher: set config.teacher.spec (e.g. 'clip_b16').")
  obj = config.objective
  if obj.target_layer not in TARGET_LAYERS:
    raise ValueError(f"Unknown target_layer {obj.target_layer!r}; use one of {TARGET_LAYERS}.")
  mae.check_config(config)
  student = common.make_student(config)
  return MRMAEModel(student=student, decoder=mae.make_decoder(config, student),
                    teacher_width=teachers.map_teachers(lambda t: t.width, teacher),
                    fusion_layers=fusion_indices(obj, student.depth))


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


def mimic_term(pred: jax.Array, teacher_out: dict, masks: Any, obj: ml_collections.ConfigDict
               ) -> jax.Array:
  """One teacher's mimic loss: `pred` [B, 1 + n, Dt] against its normalised features."""
  num_teacher = teacher_out["hidden_states"][-1].shape[1] - 1
  num_student = masks.ids_restore.shape[1]
  if num_teacher != num_student:
    raise ValueError(f"teacher has {num_teacher} patch tokens, student {num_student}: the "
                     "mimic loss pairs them one to one (match the grids, Teacher.for_student).")
  target = mimic_targets(teacher_out, masks.ids_keep, obj.target_layer, obj.target_norm)
  return mimic_loss(pred, target, obj.mimic_cls)


def loss_fn(out: dict, teacher_out: Any, masks: Any, batch: dict,
            config: ml_collections.ConfigDict) -> tuple[jax.Array, dict]:
  """teacher_out: one teacher's outputs, or a tuple of them (joint mimicking: the mimic term is
  the sum over teachers, each also logged as loss/mimic_{k})."""
  obj = config.objective
  terms = teachers.map_teachers(lambda o, p: mimic_term(p, o, masks, obj), teacher_out,
                                out["mimic"])
  metrics = {}
  if isinstance(terms, tuple):
    metrics = {f"loss/mimic_{k}": term for k, term in enumerate(terms)}
    terms = sum(terms)
  recon = mae.reconstruction_loss(out["pred"], batch["image"], masks.mask, config)
  loss = obj.mimic_weight * terms + obj.recon_weight * recon
  return loss, {"loss/mimic": terms, "loss/recon": recon, **metrics}


# The run's periodic evaluation (kNN of the student's features); nothing measured before step 1.
evaluate = evaluators.student_knn
prepare_state = common.keep_state


def default_config() -> ml_collections.ConfigDict:
  c = mae.recon_config()
  c.mimic_weight = 0.5
  c.recon_weight = 0.5
  c.target_layer = "last"  # "last": hidden_states[-1] (pre final norm) | "final": after it
  c.target_norm = "ln"     # "ln" | "none" (the paper does not say; LN as MaskAlign/FD do)
  c.mimic_cls = False      # the paper mimics the visible patch tokens only
  c.num_fusion = 3         # fused blocks, evenly spaced ending at the last; 1 = no fusion
  # explicit block indices (overrides num_fusion); () = no fusion
  c.fusion_layers = ml_collections.FieldReference(None, field_type=tuple)
  return c


ALLOWED = {
    **mae.RECON_ALLOWED,
    "mimic_weight": allowed.number(ge=0),
    "recon_weight": allowed.number(ge=0),
    "target_layer": allowed.one_of(*TARGET_LAYERS),
    "target_norm": allowed.one_of(*common.TARGET_NORMS),
    "mimic_cls": allowed.flag(),
    "num_fusion": allowed.integer(ge=1),
    "fusion_layers": allowed.indices(optional=True, note="blocks of the student"),
}
