"""Converter for transformers' `ViTModel` checkpoints (DINO ViT-B/16 is one) -> TeacherNet.

Weight names are those `save_pretrained` writes (`encoder.layer.{i}.attention.attention.query`,
...), with or without the `vit.` prefix of the task models. The names transformers 5 uses in
memory (`layers.{i}.attention.q_proj`, ...) are accepted too, for state dicts saved by hand. The
pooler and a classification head are ignored: a teacher's outputs never use them.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from mim_jax.convert import layout
from mim_jax.convert import names
from mim_jax.teachers import checkpoint_io as io
from mim_jax.teachers.network import Arch

MODEL_TYPES = ("vit",)
ARCHITECTURES = ("ViTModel", "ViTForImageClassification")

# transformers' `hidden_act` -> the shared layers' activation name.
ACTIVATIONS = {"gelu": "gelu", "quick_gelu": "quick_gelu"}

HANDLED: dict[str, io.Check] = {
    **io.encoder_fields(ACTIVATIONS),
    "qkv_bias": io.one_of(True, False),
    "head_dim": io.positive_int,  # checked against hidden_size / heads in `arch_from_config`
}
IGNORED = {
    "hidden_dropout_prob": "dropout is off in a frozen teacher",
    "attention_probs_dropout_prob": "dropout is off in a frozen teacher",
    "initializer_range": "initialisation only",
    "encoder_stride": "used only by the masked-image-modeling decoder",
    "pooler_output_size": "the pooler is not used",
    "pooler_act": "the pooler is not used",
}

_IGNORED_PREFIXES = ("pooler.", "classifier.")


def check_config(config: Mapping[str, Any]) -> None:
  """Raises CheckpointError naming an unknown model type, architecture or config field."""
  where = "ViT checkpoint"
  if config.get("model_type") not in MODEL_TYPES:
    raise io.CheckpointError(f"{where}: model_type {config.get('model_type')!r} is not handled; "
                             f"handled: {list(MODEL_TYPES)}.")
  for name in config.get("architectures") or ():
    if name not in ARCHITECTURES:
      raise io.CheckpointError(f"{where}: architecture {name!r} is not handled; handled: "
                               f"{list(ARCHITECTURES)}.")
  io.check_config(config, HANDLED, IGNORED, where)


def arch_from_config(config: Mapping[str, Any]) -> Arch:
  check_config(config)
  width, heads, patch, grid = io.checked_geometry(config, "ViT", default_patch=16)
  if config.get("head_dim", width // heads) != width // heads:
    raise io.CheckpointError(f"ViT checkpoint: config field 'head_dim' = {config['head_dim']} "
                             f"is not supported: only hidden_size / num_attention_heads.")
  return Arch(patch=patch, grid=grid, width=width,
              depth=config.get("num_hidden_layers", 12), num_heads=heads,
              mlp_dim=config.get("intermediate_size", 3072),
              act=ACTIVATIONS[config.get("hidden_act", "gelu")],
              ln_eps=float(config.get("layer_norm_eps", 1e-12)),
              qkv_bias=config.get("qkv_bias", True), patch_bias=True, pre_norm=False, proj_dim=0)


def expected_shapes(arch: Arch) -> dict[str, tuple[int, ...]]:
  """File name -> shape of every weight a ViTModel of this shape has (pooler excluded)."""
  d, m = arch.width, arch.mlp_dim
  out = {
      "embeddings.cls_token": (1, 1, d),
      "embeddings.position_embeddings": (1, arch.num_patches + 1, d),
      "embeddings.patch_embeddings.projection.weight": (d, 3, arch.patch, arch.patch),
      "embeddings.patch_embeddings.projection.bias": (d,),
      "layernorm.weight": (d,), "layernorm.bias": (d,),
  }
  for i in range(arch.depth):
    out.update(names.block_shapes(names.VIT.at(i), d, m, arch.qkv_bias))
  return out


def convert(config: Mapping[str, Any], weights: Mapping[str, np.ndarray]
            ) -> tuple[Arch, dict[str, Any]]:
  """(config.json dict, file tensors) -> (Arch, TeacherNet params as float32 numpy arrays)."""
  arch = arch_from_config(config)
  w = names.canonical_vit(weights)
  io.match_weights(w, expected_shapes(arch), lambda k: k.startswith(_IGNORED_PREFIXES),
                   "ViT checkpoint")
  params: dict[str, Any] = {
      "patch_embed": {
          "kernel": layout.conv_to_hwio(w["embeddings.patch_embeddings.projection.weight"]),
          "bias": w["embeddings.patch_embeddings.projection.bias"]},
      "cls": w["embeddings.cls_token"],
      "pos_embedding": w["embeddings.position_embeddings"][0],
      "norm": layout.layer_norm(w, "layernorm"),
  }
  for i in range(arch.depth):
    params[f"block{i}"] = names.block_from_torch(w, names.VIT.at(i), arch.num_heads,
                                                 arch.qkv_bias)
  return arch, params
