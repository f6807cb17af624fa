"""Converter for transformers' CLIP vision checkpoints -> TeacherNet.

Handled: `CLIPVisionModel`, `CLIPVisionModelWithProjection` (model_type "clip_vision_model") and
full `CLIPModel` checkpoints (model_type "clip": the vision tower and `visual_projection` are
taken, the text tower is ignored). Vision weights may carry the `vision_model.` prefix (the
projection models, CLIPModel, and CLIPVisionModel as transformers 4 saved it) or not.

Whether the teacher has a projection follows the architecture named in config.json (CLIPModel and
...WithProjection: yes; CLIPVisionModel: no), or the weights when config.json names none.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from mim_jax.convert import layout
from mim_jax.convert import names
from mim_jax.teachers import checkpoint_io as io
from mim_jax.teachers.network import Arch

MODEL_TYPES = ("clip_vision_model", "clip")
VISION_ARCHITECTURES = {"CLIPVisionModel": False, "CLIPVisionModelWithProjection": True}
FULL_ARCHITECTURES = {"CLIPModel": True}
ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu"}

VISION_HANDLED: dict[str, io.Check] = {
    **io.encoder_fields(ACTIVATIONS),
    "projection_dim": io.positive_int,
}
VISION_IGNORED = {
    "attention_dropout": "dropout is off in a frozen teacher",
    "dropout": "dropout is off in a frozen teacher (transformers 4 field)",
    "initializer_range": "initialisation only",
    "initializer_factor": "initialisation only",
}
FULL_HANDLED: dict[str, io.Check] = {
    "vision_config": lambda v: None if isinstance(v, dict) else "expected a dict",
    "vision_config_dict": lambda v: None if v is None or isinstance(v, dict) else "expected a dict",
    "projection_dim": io.positive_int,
}
FULL_IGNORED = {
    "text_config": "the text tower is not used",
    "text_config_dict": "the text tower is not used",
    "logit_scale_init_value": "the contrastive head is not used",
    "initializer_factor": "initialisation only",
}
_IGNORED_PREFIXES = ("text_model.", "text_projection.", "logit_scale")


def vision_config(config: Mapping[str, Any]) -> tuple[dict[str, Any], int, bool]:
  """(vision config, projection width, has projection) after checking everything."""
  model_type = config.get("model_type")
  if model_type not in MODEL_TYPES:
    raise io.CheckpointError(f"CLIP checkpoint: model_type {model_type!r} is not handled; "
                             f"handled: {list(MODEL_TYPES)}.")
  known = VISION_ARCHITECTURES if model_type == "clip_vision_model" else FULL_ARCHITECTURES
  names = config.get("architectures") or ()
  for name in names:
    if name not in known:
      raise io.CheckpointError(f"CLIP checkpoint: architecture {name!r} is not handled for "
                               f"model_type {model_type!r}; handled: {list(known)}.")
  has_proj = any(known[n] for n in names) if names else None
  if model_type == "clip_vision_model":
    vision, proj_dim = dict(config), config.get("projection_dim", 512)
  else:
    io.check_config(config, FULL_HANDLED, FULL_IGNORED, "CLIP checkpoint")
    # transformers 4's `vision_config_dict` overrides `vision_config` where both are given.
    vision = {**config.get("vision_config", {}), **(config.get("vision_config_dict") or {})}
    proj_dim = config.get("projection_dim", 512)
    has_proj = True
    sub_type = vision.get("model_type", "clip_vision_model")
    if sub_type != "clip_vision_model":
      raise io.CheckpointError(f"CLIP checkpoint: vision_config model_type {sub_type!r} is not "
                               "handled; handled: ['clip_vision_model'].")
    vision.pop("architectures", None)  # a sub-config's own bookkeeping
  io.check_config(vision, VISION_HANDLED, VISION_IGNORED, "CLIP vision config")
  return vision, proj_dim, has_proj


def arch_from_config(vision: Mapping[str, Any], proj_dim: int) -> Arch:
  width, heads, patch, grid = io.checked_geometry(vision, "CLIP", default_patch=32)
  return Arch(patch=patch, grid=grid, width=width,
              depth=vision.get("num_hidden_layers", 12), num_heads=heads,
              mlp_dim=vision.get("intermediate_size", 3072),
              act=ACTIVATIONS[vision.get("hidden_act", "quick_gelu")],
              ln_eps=float(vision.get("layer_norm_eps", 1e-5)), qkv_bias=True, patch_bias=False,
              pre_norm=True, proj_dim=proj_dim)


def arch_without_weights(config: Mapping[str, Any]) -> Arch:
  """The Arch of a checkpoint from its config.json alone. Where no architecture is named the
  weights would decide whether there is a visual projection; without them it is left out (a few
  hundred KB that MaskAlign-type objectives never read)."""
  vision, proj_dim, has_proj = vision_config(config)
  return arch_from_config(vision, proj_dim if has_proj else 0)


def expected_shapes(arch: Arch) -> dict[str, tuple[int, ...]]:
  d, m = arch.width, arch.mlp_dim
  out = {
      "embeddings.class_embedding": (d,),
      "embeddings.patch_embedding.weight": (d, 3, arch.patch, arch.patch),
      "embeddings.position_embedding.weight": (arch.num_patches + 1, d),
      "pre_layrnorm.weight": (d,), "pre_layrnorm.bias": (d,),
      "post_layernorm.weight": (d,), "post_layernorm.bias": (d,),
  }
  for i in range(arch.depth):
    out.update(names.block_shapes(names.CLIP.at(i), d, m))
  if arch.proj_dim:
    out["visual_projection.weight"] = (arch.proj_dim, d)
  return out


def convert(config: Mapping[str, Any], weights: Mapping[str, np.ndarray]
            ) -> tuple[Arch, dict[str, Any]]:
  """(config.json dict, file tensors) -> (Arch, TeacherNet params as float32 numpy arrays)."""
  vision, proj_dim, has_proj = vision_config(config)
  w = names.canonical_clip(weights)
  if has_proj is None:  # no architecture named: the weights decide
    has_proj = "visual_projection.weight" in w
  arch = arch_from_config(vision, proj_dim if has_proj else 0)
  io.match_weights(w, expected_shapes(arch), lambda k: k.startswith(_IGNORED_PREFIXES),
                   "CLIP checkpoint")
  params: dict[str, Any] = {
      "patch_embed": {"kernel": layout.conv_to_hwio(w["embeddings.patch_embedding.weight"])},
      "cls": w["embeddings.class_embedding"].reshape(1, 1, -1),
      "pos_embedding": w["embeddings.position_embedding.weight"],
      "pre_norm": layout.layer_norm(w, "pre_layrnorm"),
      "norm": layout.layer_norm(w, "post_layernorm"),
  }
  for i in range(arch.depth):
    params[f"block{i}"] = names.block_from_torch(w, names.CLIP.at(i), arch.num_heads)
  if arch.proj_dim:
    params["proj"] = layout.dense(w, "visual_projection", bias=False)
  return arch, params
