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
from mim_jax.teachers import checkpoint_io as io
from mim_jax.teachers.network import Arch

MODEL_TYPES = ("clip_vision_model", "clip")
VISION_ARCHITECTURES = {"CLIPVisionModel": False, "CLIPVisionModelWithProjection": True}
FULL_ARCHITECTURES = {"CLIPModel": True}
ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu"}

VISION_HANDLED: dict[str, io.Check] = {
    "hidden_size": io.positive_int,
    "intermediate_size": io.positive_int,
    "num_hidden_layers": io.positive_int,
    "num_attention_heads": io.positive_int,
    "projection_dim": io.positive_int,
    "num_channels": io.one_of(3),
    "image_size": io.square_size,
    "patch_size": io.square_size,
    "hidden_act": io.one_of(*ACTIVATIONS),
    "layer_norm_eps": io.positive_float,
    "pruned_heads": lambda v: None if not v else "pruned attention heads are not handled",
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
# transformers 4 wrote the position_ids buffer into some checkpoints; it is arange(1 + N).
_POSITION_IDS = "embeddings.position_ids"


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


def canonical_names(weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Strips `vision_model.`; drops the position_ids buffer after checking it is the identity."""
  out: dict[str, np.ndarray] = {}
  for key, value in weights.items():
    name = key[len("vision_model."):] if key.startswith("vision_model.") else key
    if name == _POSITION_IDS:
      if not np.array_equal(np.ravel(value), np.arange(np.size(value))):
        raise io.CheckpointError(f"CLIP checkpoint: {key!r} is not arange(N): positions are "
                                 "permuted, which is not handled.")
      continue
    io.put_unique(out, name, key, value, "CLIP")
  return out


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
    p = f"encoder.layers.{i}."
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
      out[f"{p}self_attn.{name}.weight"] = (d, d)
      out[f"{p}self_attn.{name}.bias"] = (d,)
    out.update({
        f"{p}layer_norm1.weight": (d,), f"{p}layer_norm1.bias": (d,),
        f"{p}layer_norm2.weight": (d,), f"{p}layer_norm2.bias": (d,),
        f"{p}mlp.fc1.weight": (m, d), f"{p}mlp.fc1.bias": (m,),
        f"{p}mlp.fc2.weight": (d, m), f"{p}mlp.fc2.bias": (d,),
    })
  if arch.proj_dim:
    out["visual_projection.weight"] = (arch.proj_dim, d)
  return out


def convert(config: Mapping[str, Any], weights: Mapping[str, np.ndarray]
            ) -> tuple[Arch, dict[str, Any]]:
  """(config.json dict, file tensors) -> (Arch, TeacherNet params as float32 numpy arrays)."""
  vision, proj_dim, has_proj = vision_config(config)
  w = canonical_names(weights)
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
    params[f"block{i}"] = _block(w, f"encoder.layers.{i}.", arch.num_heads)
  if arch.proj_dim:
    params["proj"] = layout.dense(w, "visual_projection", bias=False)
  return arch, params


def _block(w: Mapping[str, np.ndarray], p: str, heads: int) -> dict[str, Any]:
  q, k, v = (f"{p}self_attn.{n}_proj" for n in "qkv")
  return {
      "ln1": layout.layer_norm(w, f"{p}layer_norm1"),
      "attn": {"qkv_kernel": layout.fused_qkv(w[q + ".weight"], w[k + ".weight"], w[v + ".weight"],
                                          heads),
               "qkv_bias": layout.fused_qkv_bias(w[q + ".bias"], w[k + ".bias"], w[v + ".bias"],
                                             heads),
               "out_kernel": layout.out_kernel(w[f"{p}self_attn.out_proj.weight"], heads),
               "out_bias": w[f"{p}self_attn.out_proj.bias"]},
      "ln2": layout.layer_norm(w, f"{p}layer_norm2"),
      "mlp": {"fc1": layout.dense(w, f"{p}mlp.fc1"), "fc2": layout.dense(w, f"{p}mlp.fc2")},
  }
