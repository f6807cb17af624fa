"""Export of the student ViT (and a classifier's head) to PyTorch formats.

  export_hf(params, vit, out_dir, head=None)   transformers `ViTModel` (or
      `ViTForImageClassification` with a CLS-pooling head): config.json, model.safetensors and
      preprocessor_config.json, written by transformers itself (`save_pretrained`) after a strict
      `load_state_dict`. `mim_jax.teachers.load(out_dir)` reads it back like a DINO checkpoint.
  export_timm(params, vit, path, head=None)    a safetensors state dict with timm's
      `VisionTransformer` names; the keyword arguments that build the matching timm model are
      returned and stored in the file's metadata ("timm_kwargs", JSON). Needs no timm.

`params` are the student's parameters (`patch_embed`, `cls`, `block{i}`, `norm`, and
`pos_embedding` for posemb="learned"), with or without a {"params": ...} wrapper; `vit` is the
`ViT` module they belong to (its shape and switches). `head` is what
`mim_jax.objectives.classify.head_params` returns: {"head": {"kernel" [D, C], "bias" [C]}}, plus
"fc_norm": {"scale", "bias"} [D] for an average-pooling classifier.

Key maps, ours -> torch (`o` = out_kernel [H, Dh, D], `qkv` = qkv_kernel [D, 3, H, Dh]):
  patch_embed.kernel [p, p, C, D]  -> conv weight [D, C, p, p] (transpose 3, 2, 0, 1)
  Dense kernel [in, out]           -> linear weight [out, in]
  qkv[:, t] -> [D, H*Dh]           -> q/k/v weight [H*Dh, D] (HF), or stacked [3*H*Dh, D] (timm,
                                      rows in (t, head, dh) order, as timm splits them)
  o -> [H*Dh, D]                   -> o_proj / attn.proj weight [D, H*Dh]
  LayerNorm scale, bias            -> weight, bias
The fixed sin-cos position embedding is not a parameter of ours; it is written as the torch
models' learned `position_embeddings` / `pos_embed` (CLS row zeros). Our CLS input is cls +
pos[0], theirs the same sum, so nothing else moves.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import numpy as np

from mim_jax.models import layers
from mim_jax.models.vit import ViT

Params = Mapping[str, Any]

STUDENT_MEAN = (0.485, 0.456, 0.406)  # the student's input normalisation (ImageNet)
STUDENT_STD = (0.229, 0.224, 0.225)
LN_EPS = 1e-6  # the student's LayerNorm epsilon (layers.Block default, ViT's final norm)


# --------------------------------------------------------------------------------------------
# Array helpers.
# --------------------------------------------------------------------------------------------
def _np(x: Any) -> np.ndarray:
  """A writable host float32 copy (params must be fully addressable: one host, or gathered)."""
  return np.array(jax.device_get(x), np.float32)


# Pretraining-only inputs of the student (inpainting / robust-MAE mask tokens): not part of
# the encoder a downstream model runs, so they are left out of the export.
PRETRAINING_ONLY = ("mask_token", "mid_mask_token")


def _unwrap(params: Params) -> Params:
  """Drops a {"params": ...} wrapper and flax's partitioning boxes."""
  params = nn.meta.unbox(params)
  if set(params) == {"params"}:
    return params["params"]
  return params


def conv_weight(kernel: Any) -> np.ndarray:
  """HWIO [p, p, C, D] -> torch conv [D, C, p, p]."""
  return _np(kernel).transpose(3, 2, 0, 1)


def linear_weight(kernel: Any) -> np.ndarray:
  """[in, out] -> torch linear [out, in]."""
  return _np(kernel).T


def qkv_weights(kernel: Any) -> list[np.ndarray]:
  """[D, 3, H, Dh] -> three torch linear weights [H*Dh, D] (q, k, v)."""
  k = _np(kernel)
  d = k.shape[0]
  return [np.ascontiguousarray(k[:, t].reshape(d, -1).T) for t in range(3)]


def out_weight(kernel: Any) -> np.ndarray:
  """[H, Dh, D] -> torch linear [D, H*Dh]."""
  k = _np(kernel)
  return np.ascontiguousarray(k.reshape(-1, k.shape[-1]).T)


def position_embedding(params: Params, vit: ViT) -> np.ndarray:
  """[N + 1, D] added to [CLS, patches]: fixed sin-cos (CLS row zeros), learned, or zeros."""
  if vit.posemb == "sincos":
    return _np(layers.posemb_sincos_2d(vit.grid, vit.width, cls_token=True))
  if vit.posemb == "learned":
    return _np(params["pos_embedding"])
  if vit.posemb == "none":
    return np.zeros((vit.num_patches + 1, vit.width), np.float32)
  raise ValueError(f"Cannot export posemb {vit.posemb!r}: handled: 'sincos', 'learned', 'none'.")


def _ln(p: Params) -> tuple[np.ndarray, np.ndarray]:
  return _np(p["scale"]), _np(p["bias"])


def check_student(params: Params, vit: ViT) -> None:
  """Refuses a tree that is not `vit`'s student (a classifier's full tree, wrong depth, ...)."""
  if "student" in params:
    raise ValueError("Pass the student's parameters (params['student']) and the head separately "
                     "(classify.head_params(params)), not the classifier's whole tree.")
  if getattr(vit, "rel_pos", "none") != "none":
    raise ValueError(f"Cannot export rel_pos={vit.rel_pos!r}: transformers' ViTModel and timm's "
                     "VisionTransformer have absolute position embeddings only.")
  want = {"patch_embed", "cls", "norm"} | {f"block{i}" for i in range(vit.depth)}
  if vit.posemb == "learned":
    want.add("pos_embedding")
  if set(params) - set(PRETRAINING_ONLY) != want:
    raise ValueError(f"Student parameters do not match the ViT (depth {vit.depth}, posemb "
                     f"{vit.posemb!r}): missing {sorted(want - set(params))}, unexpected "
                     f"{sorted(set(params) - want)}.")
  kernel = np.shape(params["patch_embed"]["kernel"])
  if kernel != (vit.patch, vit.patch, 3, vit.width):
    raise ValueError(f"patch_embed kernel {kernel} does not match patch {vit.patch}, width "
                     f"{vit.width}, 3 channels.")


def _num_labels(head: Params) -> int:
  return int(np.shape(nn.meta.unbox(head)["head"]["kernel"])[1])


def _check_head(head: Optional[Params]) -> Optional[str]:
  """The head's pooling, "cls" or "avg" (fc_norm present), or None without a head."""
  if head is None:
    return None
  unknown = set(head) - {"head", "fc_norm"}
  if "head" not in head or unknown:
    raise ValueError(f"head must be {{'head': {{'kernel', 'bias'}}, 'fc_norm'?: ...}} as "
                     f"classify.head_params returns it; got keys {sorted(head)}.")
  return "avg" if "fc_norm" in head else "cls"


# --------------------------------------------------------------------------------------------
# transformers ViTModel / ViTForImageClassification.
# --------------------------------------------------------------------------------------------
def hf_config(vit: ViT, num_labels: Optional[int] = None):
  """The transformers `ViTConfig` of the student (dropouts off, exact GELU, eps 1e-6)."""
  from transformers import ViTConfig  # pylint: disable=import-outside-toplevel
  kwargs = dict(hidden_size=vit.width, num_hidden_layers=vit.depth,
                num_attention_heads=vit.num_heads, intermediate_size=vit.mlp_dim,
                hidden_act="gelu", layer_norm_eps=LN_EPS, image_size=vit.image_size,
                patch_size=vit.patch, num_channels=3, qkv_bias=True, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0)
  if num_labels is not None:
    kwargs["num_labels"] = num_labels
  return ViTConfig(**kwargs)


def hf_state_dict(params: Params, vit: ViT, head: Optional[Params] = None
                  ) -> dict[str, np.ndarray]:
  """Names of transformers 5's in-memory `ViTModel` (`layers.{i}.attention.q_proj`, ...);
  with a head, those of `ViTForImageClassification` (`vit.` prefix, `classifier`)."""
  params, head = _unwrap(params), None if head is None else nn.meta.unbox(head)
  check_student(params, vit)
  if vit.layer_scale is not None:
    raise ValueError("transformers' ViTModel has no layer scale: export this student with "
                     "export_timm.")
  pool = _check_head(head)
  if pool == "avg":
    raise ValueError("transformers' ViTForImageClassification pools the CLS token after the "
                     "final norm; this head average-pools with fc_norm: export it with "
                     "export_timm (global_pool='avg'), or export the encoder alone (head=None).")
  sd = {
      "embeddings.cls_token": _np(params["cls"]),
      "embeddings.position_embeddings": position_embedding(params, vit)[None],
      "embeddings.patch_embeddings.projection.weight": conv_weight(params["patch_embed"]["kernel"]),
      "embeddings.patch_embeddings.projection.bias": _np(params["patch_embed"]["bias"]),
  }
  sd["layernorm.weight"], sd["layernorm.bias"] = _ln(params["norm"])
  for i in range(vit.depth):
    b, p = params[f"block{i}"], f"layers.{i}."
    attn = b["attn"]
    for name, w, bias in zip(("q_proj", "k_proj", "v_proj"), qkv_weights(attn["qkv_kernel"]),
                             _np(attn["qkv_bias"]).reshape(3, -1)):
      sd[f"{p}attention.{name}.weight"], sd[f"{p}attention.{name}.bias"] = w, bias
    sd[f"{p}attention.o_proj.weight"] = out_weight(attn["out_kernel"])
    sd[f"{p}attention.o_proj.bias"] = _np(attn["out_bias"])
    sd[f"{p}layernorm_before.weight"], sd[f"{p}layernorm_before.bias"] = _ln(b["ln1"])
    sd[f"{p}layernorm_after.weight"], sd[f"{p}layernorm_after.bias"] = _ln(b["ln2"])
    for fc in ("fc1", "fc2"):
      sd[f"{p}mlp.{fc}.weight"] = linear_weight(b["mlp"][fc]["kernel"])
      sd[f"{p}mlp.{fc}.bias"] = _np(b["mlp"][fc]["bias"])
  if pool is None:
    return sd
  sd = {f"vit.{k}": v for k, v in sd.items()}
  sd["classifier.weight"] = linear_weight(head["head"]["kernel"])
  sd["classifier.bias"] = _np(head["head"]["bias"])
  return sd


def _save_preprocessor(out_dir: str, image_size: int) -> None:
  """preprocessor_config.json with the student's ImageNet mean/std (transformers' ViT default
  is 0.5/0.5, which would feed the model wrongly normalised images)."""
  try:  # The PIL backend needs no torchvision.
    from transformers import ViTImageProcessorPil as Processor  # pylint: disable=import-outside-toplevel
  except ImportError:
    from transformers import ViTImageProcessor as Processor  # pylint: disable=import-outside-toplevel
  Processor(size={"height": image_size, "width": image_size}, resample=3,  # bicubic
            image_mean=list(STUDENT_MEAN), image_std=list(STUDENT_STD)).save_pretrained(out_dir)


def export_hf(params: Params, vit_module: ViT, out_dir: str, *, head: Optional[Params] = None
              ) -> str:
  """Writes a transformers checkpoint directory of the student (and CLS head); returns out_dir.

  The torch model is built from `hf_config` (pooler off), loads `hf_state_dict` strictly (every
  name must match, both ways), and `save_pretrained` writes it. Inputs of the torch model are
  the student's: ImageNet-normalised pixels, NCHW.
  """
  import torch  # pylint: disable=import-outside-toplevel
  from transformers import ViTForImageClassification, ViTModel  # pylint: disable=import-outside-toplevel
  sd = hf_state_dict(params, vit_module, head)
  if head is None:
    model = ViTModel(hf_config(vit_module), add_pooling_layer=False)
  else:
    model = ViTForImageClassification(hf_config(vit_module, _num_labels(head)))
  model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()},
                        strict=True)
  os.makedirs(out_dir, exist_ok=True)
  model.eval().save_pretrained(out_dir, safe_serialization=True)
  _save_preprocessor(out_dir, vit_module.image_size)
  return out_dir


# --------------------------------------------------------------------------------------------
# timm VisionTransformer.
# --------------------------------------------------------------------------------------------
def timm_kwargs(vit: ViT, head: Optional[Params] = None) -> dict[str, Any]:
  """Keyword arguments of `timm.models.vision_transformer.VisionTransformer` for this export."""
  pool = _check_head(head)
  ratio = vit.mlp_dim / vit.width
  if int(vit.width * ratio) != vit.mlp_dim:  # timm's hidden width is int(dim * mlp_ratio)
    raise ValueError(f"timm cannot express mlp_dim {vit.mlp_dim} at width {vit.width}.")
  return dict(img_size=vit.image_size, patch_size=vit.patch, in_chans=3,
              num_classes=0 if pool is None else _num_labels(head),
              global_pool="avg" if pool == "avg" else "token", embed_dim=vit.width,
              depth=vit.depth, num_heads=vit.num_heads, mlp_ratio=ratio,
              qkv_bias=True, class_token=True, init_values=vit.layer_scale)


def timm_state_dict(params: Params, vit: ViT, head: Optional[Params] = None
                    ) -> dict[str, np.ndarray]:
  """timm names: cls_token, pos_embed, patch_embed.proj, blocks.{i}.(norm1, attn.qkv, attn.proj,
  ls1.gamma?, norm2, mlp.fc1, mlp.fc2, ls2.gamma?), then norm (CLS pooling) or fc_norm (average
  pooling: timm's `norm` is then an Identity), and head."""
  params, head = _unwrap(params), None if head is None else nn.meta.unbox(head)
  check_student(params, vit)
  pool = _check_head(head)
  sd = {
      "cls_token": _np(params["cls"]),
      "pos_embed": position_embedding(params, vit)[None],
      "patch_embed.proj.weight": conv_weight(params["patch_embed"]["kernel"]),
      "patch_embed.proj.bias": _np(params["patch_embed"]["bias"]),
  }
  for i in range(vit.depth):
    b, p = params[f"block{i}"], f"blocks.{i}."
    attn = b["attn"]
    sd[f"{p}norm1.weight"], sd[f"{p}norm1.bias"] = _ln(b["ln1"])
    sd[f"{p}attn.qkv.weight"] = np.concatenate(qkv_weights(attn["qkv_kernel"]), axis=0)
    sd[f"{p}attn.qkv.bias"] = _np(attn["qkv_bias"]).reshape(-1)
    sd[f"{p}attn.proj.weight"] = out_weight(attn["out_kernel"])
    sd[f"{p}attn.proj.bias"] = _np(attn["out_bias"])
    sd[f"{p}norm2.weight"], sd[f"{p}norm2.bias"] = _ln(b["ln2"])
    for fc in ("fc1", "fc2"):
      sd[f"{p}mlp.{fc}.weight"] = linear_weight(b["mlp"][fc]["kernel"])
      sd[f"{p}mlp.{fc}.bias"] = _np(b["mlp"][fc]["bias"])
    if vit.layer_scale is not None:
      sd[f"{p}ls1.gamma"], sd[f"{p}ls2.gamma"] = _np(b["ls1"]), _np(b["ls2"])
  if pool == "avg":
    sd["fc_norm.weight"], sd["fc_norm.bias"] = _ln(head["fc_norm"])
  else:
    sd["norm.weight"], sd["norm.bias"] = _ln(params["norm"])
  if pool is not None:
    sd["head.weight"] = linear_weight(head["head"]["kernel"])
    sd["head.bias"] = _np(head["head"]["bias"])
  return sd


def export_timm(params: Params, vit_module: ViT, path: str, *, head: Optional[Params] = None
                ) -> dict[str, Any]:
  """Writes timm's state dict as safetensors at `path`; returns the timm model kwargs.

  Load it with `timm.models.vision_transformer.VisionTransformer(**kwargs)` and
  `load_state_dict(safetensors.torch.load_file(path), strict=True)`; the kwargs are also in the
  file's metadata under "timm_kwargs".
  """
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  kwargs = timm_kwargs(vit_module, head)
  # safetensors' numpy writer copies raw buffers: transposed views must be made contiguous.
  sd = {k: np.ascontiguousarray(v) for k, v in timm_state_dict(params, vit_module, head).items()}
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  save_file(sd, path, metadata={"format": "pt", "timm_kwargs": json.dumps(kwargs)})
  return kwargs
