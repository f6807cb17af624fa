"""MAE (pixel reconstruction of masked patches) with the robust-MAE ingredients as switches.

Model: the student ViT encodes [CLS, visible patches] (random masking, r = 0.75); the MAE
decoder (`mim_jax.models.decoder`) predicts the pixels of every patch, [B, N, p*p*3].

Target, exactly. `batch["image"]` is what the input pipeline yields: RandomResizedCrop (+ flip) of
the image, pixels in [0, 1], then normalised per channel with the ImageNet mean/std. The target
starts from the same crop back in [0, 1] pixels, `x = image * std + mean`, and then

  global_norm = "none"          x unchanged                     (robust MAE's "None" column)
              = "global_rgb"    x = (x - mean_c) / std_c         per channel c (dataset stats)
              = "global_patch"  patchify, then (x_d - mean_d) / std_d for each of the p*p*3
                                dimensions d of a patch vector (dataset stats)
  patchify                      [B, N, p*p*3], pixels in (row, column, channel) order
  norm_pix = True               per patch: (x - mean) / sqrt(var + 1e-6), var unbiased (torch's
                                `.var()`, divisor p*p*3 - 1), mean/var over the patch's p*p*3 values

Dataset statistics come from `objective.stats_path`, an .npz written by
`python -m mim_jax.tools.dataset_stats` (keys rgb_mean/rgb_std [3], patch_mean/patch_std
[p*p*3], over pixels in [0, 1]). For "global_rgb" without a stats file the ImageNet constants of
the input pipeline are used: then the normalised x is `batch["image"]` itself, which is exactly
the target of MAE's public code (it patchifies the normalised input); robust MAE points out that
this hidden global normalisation is what makes per-patch normalisation work.

Loss: squared error averaged over the p*p*3 values of a patch, then averaged over the masked
patches only (mask = 1), as MAE's `forward_loss`.

Robust-MAE switches: `objective.decoder.attn_drop` (0.3: dropout on the decoder's attention
probabilities), `global_norm` and `stats_path`, `mid_mask_ratio`/`mid_mask_depth` (a second set of
mask tokens inside the encoder), and `config.data.crop_scale` (0.5-1 for ViT-B).
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mim_jax import allowed
from mim_jax import config as config_lib
from mim_jax import masking
from mim_jax.data.normalization import STUDENT_MEAN, STUDENT_STD
from mim_jax.models import layers
from mim_jax.models.decoder import Decoder
from mim_jax.models.vit import ViT
from mim_jax.objectives import common
from mim_jax.objectives import evaluators

F32 = jnp.float32
GLOBAL_NORMS = ("none", "global_rgb", "global_patch")
STATS_KEYS = ("rgb_mean", "rgb_std", "patch_mean", "patch_std")


# --------------------------------------------------------------------------------------------
# Targets and loss (pure functions).
# --------------------------------------------------------------------------------------------
def unnormalize(images: jax.Array) -> jax.Array:
  """Student-normalised images [B, H, W, 3] -> pixels in [0, 1] (the crop the model saw)."""
  mean = jnp.asarray(STUDENT_MEAN, F32)
  std = jnp.asarray(STUDENT_STD, F32)
  return images.astype(F32) * std + mean


def per_patch_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """[..., D] -> (x - mean) / sqrt(var + eps) over the last axis, var unbiased (divisor D - 1)."""
  d = x.shape[-1]
  mean = x.mean(-1, keepdims=True)
  var = jnp.square(x - mean).sum(-1, keepdims=True) / (d - 1)
  return (x - mean) * jax.lax.rsqrt(var + eps)


def _std_floor(std: np.ndarray, floor: float = 1e-6) -> jax.Array:
  """A dataset std as a divisor: a dimension constant over the dataset (e.g. a border that is
  always background) would otherwise divide 0 by 0."""
  return jnp.maximum(jnp.asarray(std, F32), floor)


def pixel_targets(images: jax.Array, patch: int, *, norm_pix: bool = True,
                  global_norm: str = "none", stats: Optional[dict] = None) -> jax.Array:
  """Reconstruction targets [B, N, p*p*3] from student-normalised images [B, H, W, 3].

  See the module docstring for the exact recipe. `stats`: {"rgb_mean", "rgb_std": [3],
  "patch_mean", "patch_std": [p*p*3]} over pixels in [0, 1]; needed by the global norms.
  """
  x = unnormalize(images)
  if global_norm not in GLOBAL_NORMS:
    raise ValueError(f"Unknown global_norm {global_norm!r}; use one of {GLOBAL_NORMS}.")
  if global_norm == "global_rgb":
    x = (x - jnp.asarray(stats["rgb_mean"], F32)) / _std_floor(stats["rgb_std"])
  x = layers.patchify(x, patch)
  if global_norm == "global_patch":
    mean, std = np.asarray(stats["patch_mean"]), np.asarray(stats["patch_std"])
    if mean.shape != (x.shape[-1],):
      raise ValueError(f"patch statistics have {mean.shape[0]} dimensions, but a {patch}x{patch}"
                       f" RGB patch has {x.shape[-1]}: compute them with this patch size.")
    x = (x - jnp.asarray(mean, F32)) / _std_floor(std)
  if norm_pix:
    x = per_patch_normalize(x)
  return x


def masked_mse(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean over masked patches of the per-patch mean squared error.

  pred, target [B, N, D]; mask [B, N], 1 = masked (the only patches that count). Scalar.
  """
  per_patch = jnp.square(pred.astype(F32) - target).mean(-1)
  return (per_patch * mask).sum() / mask.sum()


@functools.lru_cache(maxsize=8)
def _read_stats(path: str) -> dict[str, np.ndarray]:
  with open(path, "rb") as f:
    data = np.load(f)
    missing = [k for k in STATS_KEYS if k not in data]
    if missing:
      raise ValueError(f"{path} lacks {missing}: write it with `python -m "
                       "mim_jax.tools.dataset_stats`.")
    return {k: np.asarray(data[k], np.float32) for k in STATS_KEYS}


def target_stats(obj: ml_collections.ConfigDict) -> Optional[dict[str, np.ndarray]]:
  """The dataset statistics the objective's `global_norm` needs (None for "none").

  Read once per path (cached) at trace time: they enter the jitted step as constants.
  """
  if obj.global_norm == "none":
    return None
  if obj.get("stats_path"):
    return _read_stats(obj.stats_path)
  if obj.global_norm == "global_rgb":
    return {"rgb_mean": np.asarray(STUDENT_MEAN, np.float32),
            "rgb_std": np.asarray(STUDENT_STD, np.float32)}
  raise ValueError(f"global_norm={obj.global_norm!r} needs objective.stats_path: compute it with "
                   "`python -m mim_jax.tools.dataset_stats --config <config> --out stats.npz`.")


def reconstruction_loss(pred: jax.Array, images: jax.Array, mask: jax.Array,
                        config: ml_collections.ConfigDict) -> jax.Array:
  """MSE of pred [B, N, p*p*3] against the pixel targets of images [B, H, W, 3], masked only."""
  obj = config.objective
  _, patch = config_lib.decode_variant(config.student.variant)
  target = pixel_targets(images, patch, norm_pix=obj.norm_pix, global_norm=obj.global_norm,
                         stats=target_stats(obj))
  return masked_mse(pred, target, mask)


# --------------------------------------------------------------------------------------------
# Model.
# --------------------------------------------------------------------------------------------
def make_decoder(config: ml_collections.ConfigDict, student: ViT) -> Decoder:
  """The pixel decoder for `student` from `config.objective.decoder`."""
  d = config.objective.decoder
  return Decoder(grid=student.grid, out_dim=student.patch * student.patch * 3, width=d.width,
                 depth=d.depth, num_heads=d.heads, mlp_dim=d.mlp_dim, attn_drop=d.attn_drop,
                 dtype=common.compute_dtype(config),
                 stream_dtype=common.student_stream_dtype(config))


class MAEModel(nn.Module):
  """Student encoder on visible tokens + pixel decoder. Output: {"pred": [B, N, p*p*3]}.

  With `mid_mask_count` = m > 0 (robust MAE's mid-level mask tokens), the first m masked patches
  of the shuffle (a uniformly random subset under random masking) enter the encoder as its
  `mid_mask_token` + their position embedding before block `mid_depth`; the encoder then returns
  [CLS, n visible, m inserted] tokens, which are the first n + m entries of the shuffle, so the
  decoder's `ids_restore` places them unchanged. They are still masked patches: the loss covers
  them with the other masked ones.
  """
  student: ViT
  decoder: Decoder
  mid_mask_count: int = 0
  mid_depth: int = 8

  @nn.compact
  def __call__(self, images: jax.Array, masks: Any, *, train: bool = False) -> dict:
    mid = {}
    if self.mid_mask_count:
      mid = dict(mid_ids=masking.masked_ids(masks)[:, :self.mid_mask_count],
                 mid_depth=self.mid_depth)
    latent, _ = self.student(images, masks.ids_keep, train=train, **mid)  # [B, 1+n(+m), D]
    return {"pred": self.decoder(latent, masks.ids_restore, train=train)}


def check_config(config: ml_collections.ConfigDict) -> None:
  """Fails early (before any tracing) on settings the objective cannot honour."""
  obj = config.objective
  if config.mask.kind == "none":
    raise ValueError("MAE reconstructs masked patches: mask.kind 'none' leaves none to predict.")
  if obj.global_norm not in GLOBAL_NORMS:
    raise ValueError(f"Unknown global_norm {obj.global_norm!r}; use one of {GLOBAL_NORMS}.")
  target_stats(obj)  # a missing or malformed stats file fails here, not in the first step


def mid_mask_count(config: ml_collections.ConfigDict, student: ViT) -> int:
  """m = int(N * mid_mask_ratio) mid-level mask tokens (49 of 196 at 0.25), checked to fit in
  the masked patches and `mid_mask_depth` to be a block of the student."""
  obj = config.objective
  n_all = student.num_patches
  count = int(n_all * obj.get("mid_mask_ratio", 0.0))
  if not count:
    return 0
  n_masked = n_all - masking.num_keep(n_all, config.mask.ratio)
  if config.mask.kind not in ("random", "attentive", "focused"):
    raise ValueError(f"mid-level mask tokens need ratio-based masking, not {config.mask.kind!r}.")
  if count > n_masked:
    raise ValueError(f"mid_mask_ratio={obj.mid_mask_ratio} asks for {count} mid-level mask "
                     f"tokens, but only {n_masked} of {n_all} patches are masked.")
  if not 0 <= obj.mid_mask_depth < student.depth:
    raise ValueError(f"mid_mask_depth={obj.mid_mask_depth} is not a block of the "
                     f"{student.depth}-block student.")
  return count


TEACHER = False  # pixels are the target: no teacher


def make_model(config: ml_collections.ConfigDict, teacher: Any = None) -> MAEModel:
  del teacher  # MAE has none
  check_config(config)
  student = common.make_student(config)
  return MAEModel(student=student, decoder=make_decoder(config, student),
                  mid_mask_count=mid_mask_count(config, student),
                  mid_depth=config.objective.mid_mask_depth)


def loss_fn(out: dict, teacher_out: Optional[dict], masks: Any, batch: dict,
            config: ml_collections.ConfigDict) -> tuple[jax.Array, dict]:
  del teacher_out
  loss = reconstruction_loss(out["pred"], batch["image"], masks.mask, config)
  return loss, {"loss/recon": loss}


# The run's periodic evaluation (kNN of the student's features); nothing measured before step 1.
evaluate = evaluators.student_knn
prepare_state = common.keep_state


# --------------------------------------------------------------------------------------------
# Config.
# --------------------------------------------------------------------------------------------
def decoder_config() -> ml_collections.ConfigDict:
  """MAE's decoder: 512 wide, 8 blocks, 16 heads, MLP ratio 4; no attention dropout."""
  return ml_collections.ConfigDict(dict(width=512, depth=8, heads=16, mlp_dim=2048,
                                        attn_drop=0.0))


def _divides_width(heads: int, ctx: allowed.Context):
  width = ctx.get("objective.decoder.width")
  if isinstance(width, int) and width % heads:
    return f"a divisor of objective.decoder.width ({width})"
  return None


DECODER_ALLOWED = {
    "width": allowed.integer(ge=1),
    "depth": allowed.integer(ge=1),
    "heads": allowed.integer(ge=1).bound(_divides_width),
    "mlp_dim": allowed.integer(ge=1),
    "attn_drop": allowed.number(ge=0, lt=1),
}


def recon_config() -> ml_collections.ConfigDict:
  """Target switches shared by MAE and MR-MAE (MAE's public-code target by default)."""
  c = ml_collections.ConfigDict(dict(norm_pix=True, global_norm="global_rgb",
                                     decoder=decoder_config()))
  # An .npz from mim_jax.tools.dataset_stats, read when the step is traced (so on every host:
  # put it where all of them can read it); None: ImageNet constants (global_rgb only).
  c.stats_path = ml_collections.FieldReference(None, field_type=str)
  return c


RECON_ALLOWED = {
    "norm_pix": allowed.flag(),
    "global_norm": allowed.one_of(*GLOBAL_NORMS),
    "stats_path": allowed.free("an .npz of dataset statistics, read before the run writes"),
    **allowed.prefixed("decoder", DECODER_ALLOWED),
}


def default_config() -> ml_collections.ConfigDict:
  c = recon_config()
  # Robust MAE's mid-level mask tokens: int(N * ratio) of the masked patches enter the encoder
  # as mask tokens before block `mid_mask_depth` (0-based, i.e. after that many blocks; 0.0: off;
  # the paper: 0.25 "at the 8th depth" for ViT-B).
  c.mid_mask_ratio = 0.0
  c.mid_mask_depth = 8
  return c


ALLOWED = {
    **RECON_ALLOWED,
    "mid_mask_ratio": allowed.number(ge=0, le=1),
    "mid_mask_depth": allowed.integer(ge=0),  # a block of the student: checked with the model
}
