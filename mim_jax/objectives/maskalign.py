"""MaskAlign: align the visible-token features of a masked student with a frozen teacher.

The student sees [CLS, visible patches] (attentive masking, r = 0.7). Each block's output
(before the final norm) is stacked, fused by the Dynamic Alignment matrix W [T, S]
(`fused_j = sum_i W[j, i] x_i`, as the public code does it), and each used teacher layer j has
its own adaptor A_j (Linear student_dim -> teacher_dim, or a 2-layer MLP). Targets: the
teacher's block outputs normalised over the FULL sequence, then gathered at CLS + ids_keep.

Loss = sum_j w_j * loss(A_j(fused_j), target_j) with top-K weights by default.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mim_jax import allowed
from mim_jax.models import layers
from mim_jax.models.vit import ViT, gather_tokens
from mim_jax.objectives import common
from mim_jax.objectives import evaluators

F32 = jnp.float32


LAYER_WEIGHTS = ("top_k", "out", "mean", "mid", "linear_decay")


def layer_weights(kind: str, num_layers: int, k: int = 5, mid: int = 6) -> tuple[float, ...]:
  """Loss weights over the teacher's T block outputs (index 0 = the first block's), as the
  public code's `loss_weights`:

  "top_k": [0]*(T-K) + [1/K]*K; "out": the last layer only; "mean": 1/T each;
  "mid": 1 on the single layer `mid` (the code's `mid{m}`);
  "linear_decay": i / (0 + 1 + ... + T-1) for layer i (the code's name: the weight grows with
  depth, layer 0 gets none).
  """
  t = num_layers
  if kind == "top_k":
    if not 1 <= k <= t:
      raise ValueError(f"top_k={k} is not a number of the teacher's {t} layers: use 1..{t}.")
    return (0.0,) * (t - k) + (1.0 / k,) * k
  if kind == "out":
    return (0.0,) * (t - 1) + (1.0,)
  if kind == "mean":
    return (1.0 / t,) * t
  if kind == "mid":
    if not 0 <= mid < t:
      raise ValueError(f"mid_layer={mid} is not a layer of the teacher's {t}: use 0..{t - 1}.")
    return tuple(1.0 if i == mid else 0.0 for i in range(t))
  if kind == "linear_decay":
    total = t * (t - 1) / 2
    return tuple(i / total for i in range(t)) if total else (1.0,)
  raise ValueError(f"Unknown layer weighting {kind!r}: use one of {LAYER_WEIGHTS}.")


def alignment_init(teacher_depth: int, student_depth: int) -> Callable:
  """Identity + 0.01 when depths match, else uniform 1/S (public MaskAlign code)."""
  def init(key, shape, dtype=F32):
    del key
    if teacher_depth == student_depth:
      return jnp.eye(student_depth, dtype=dtype) + 0.01
    return jnp.full(shape, 1.0 / student_depth, dtype)
  return init


class Adaptor(nn.Module):
  """Linear (xavier) or 2-layer MLP (hidden width = the student's, as the paper and the public
  code) from the student width to the teacher width."""
  features: int
  kind: str = "linear"
  dtype: Any = F32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, L, Ds] -> [B, L, features]. Both stay sharded along the batch: unconstrained,
    XLA may gather the output's cotangent over fsdp in the backward pass (it did, as a
    flattened [B * L, features] array, where the activations weigh less than the kernel)."""
    x = nn.with_logical_constraint(x, ("batch", "length", None))
    if self.kind == "linear":
      y = layers.Dense(self.features, dtype=self.dtype, kernel_axes=("embed", "mlp"))(x)
    elif self.kind == "mlp":
      h = layers.Dense(x.shape[-1], dtype=self.dtype, kernel_axes=("embed", "mlp"))(x)
      h = layers.activation("gelu")(h)
      y = layers.Dense(self.features, dtype=self.dtype, kernel_axes=("mlp", "embed"))(h)
    else:
      raise ValueError(f"Unknown adaptor {self.kind!r}: use 'linear' or 'mlp'.")
    return nn.with_logical_constraint(y, ("batch", "length", None))


class MaskAlignModel(nn.Module):
  """Student + Dynamic Alignment + adaptors. Output: {"preds": {j: [B, 1+n, Dt]}}."""
  student: ViT
  teacher_width: int
  teacher_depth: int
  used_layers: Sequence[int]  # teacher layers with a non-zero loss weight
  adaptor: str = "linear"
  alignment: str = "dynamic"  # "dynamic" (matrix W) | "layerwise" (student i -> teacher i)

  @nn.compact
  def __call__(self, images: jax.Array, masks: Any, *, train: bool = False) -> dict:
    _, aux = self.student(images, masks.ids_keep, train=train)
    blocks = aux["blocks"]
    s, t = len(blocks), self.teacher_depth
    if self.alignment == "dynamic":
      w = self.param("alignment", alignment_init(t, s), (t, s), F32)
      stacked = jnp.stack(blocks)  # [S, B, L, D]
      fused = {j: jnp.einsum("s,sbld->bld", w[j], stacked) for j in self.used_layers}
    elif self.alignment == "layerwise":
      if s != t:
        raise ValueError(f"Layer-wise alignment needs equal depths: student {s} blocks vs "
                         f"teacher {t}; use alignment='dynamic'.")
      fused = {j: blocks[j] for j in self.used_layers}
    else:
      raise ValueError(f"Unknown alignment {self.alignment!r}: use 'dynamic' or 'layerwise'.")
    preds = {j: Adaptor(self.teacher_width, self.adaptor, self.student.dtype,
                        name=f"adaptor{j}")(fused[j]) for j in self.used_layers}
    return {"preds": preds}


def make_model(config: ml_collections.ConfigDict, teacher: Any) -> MaskAlignModel:
  obj = config.objective
  weights = layer_weights(obj.layer_weights, teacher.depth, obj.top_k, obj.mid_layer)
  return MaskAlignModel(
      student=common.make_student(config), teacher_width=teacher.width,
      teacher_depth=teacher.depth,
      used_layers=tuple(j for j, w in enumerate(weights) if w > 0),
      adaptor=obj.adaptor, alignment=obj.alignment)


def targets(hidden: jax.Array, ids_keep: jax.Array, norm: str) -> jax.Array:
  """Teacher block output [B, 1+N, D] -> normalised over the full sequence, then gathered
  at CLS + ids_keep: [B, 1+n, D].

  A per-token norm ("ln", "l2", "none") is applied after the gather: the same values, without
  a float32 copy of every token of the teacher's output ([B, 1+N, D] per used layer, in HBM on
  a TPU) for the quarter the loss reads. "bn" takes its statistics from the whole output.
  """
  if norm == "bn":
    hidden = common.normalize_target(hidden, norm)
  picked = jnp.concatenate([hidden[:, :1], gather_tokens(hidden[:, 1:], ids_keep)], axis=1)
  return picked if norm == "bn" else common.normalize_target(picked, norm)


def loss_fn(out: dict, teacher_out: dict, masks: Any, batch: dict,
            config: ml_collections.ConfigDict) -> tuple[jax.Array, dict]:
  obj = config.objective
  hidden = teacher_out["hidden_states"][1:]  # outputs of each teacher block
  weights = layer_weights(obj.layer_weights, len(hidden), obj.top_k, obj.mid_layer)
  total, metrics = jnp.zeros((), F32), {}
  for j, pred in out["preds"].items():
    target = targets(hidden[j], masks.ids_keep, obj.target_norm)
    if not obj.align_cls:
      pred, target = pred[:, 1:], target[:, 1:]
    # The public code doubles smooth-L1 so that it equals L2 near zero.
    scale = 2.0 if obj.loss == "smooth_l1" else 1.0
    per_layer = scale * common.regression_loss(pred, target, obj.loss, beta=obj.beta).mean()
    metrics[f"loss/layer{j}"] = per_layer
    total = total + weights[j] * per_layer
  return total, metrics


# The run's periodic evaluation (kNN of the student's features); nothing measured before step 1.
evaluate = evaluators.student_knn
prepare_state = common.keep_state


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      adaptor="linear", alignment="dynamic", layer_weights="top_k", top_k=5, mid_layer=6,
      target_norm="ln", align_cls=True, loss="smooth_l1", beta=1.0))


def _teacher_layer(weighting: str, first: int) -> allowed.Where:
  """top_k (first 1) / mid_layer (first 0): within the teacher's blocks, for its weighting."""
  def where(value: int, ctx: allowed.Context):
    depths = ctx.teacher_depths
    if ctx.get("objective.layer_weights") != weighting or not depths:
      return None
    last = min(depths) - 1 + first
    if not first <= value <= last:
      return f"an integer in [{first}, {last}] (the teacher has {min(depths)} blocks)"
    return None
  return where


ALLOWED = {
    "adaptor": allowed.one_of("linear", "mlp"),
    "alignment": allowed.one_of("dynamic", "layerwise"),
    "layer_weights": allowed.one_of(*LAYER_WEIGHTS),
    "top_k": allowed.integer(ge=1).bound(_teacher_layer("top_k", 1)),
    "mid_layer": allowed.integer(ge=0).bound(_teacher_layer("mid", 0)),
    "target_norm": allowed.one_of(*common.TARGET_NORMS),
    "align_cls": allowed.flag(),
    "loss": allowed.one_of(*common.LOSSES),
    "beta": allowed.number(gt=0),
}

