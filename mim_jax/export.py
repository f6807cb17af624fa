"""Export of the student ViT (and a classifier's head) to PyTorch formats, without torch.

  export_hf(params, vit, out_dir, head=None, labels=None)   a transformers `ViTModel` (or
      `ViTForImageClassification` with a CLS-pooling head) directory: config.json,
      model.safetensors (the names transformers' `save_pretrained` writes) and
      preprocessor_config.json (the student's evaluation preprocessing). The encoder's pooler is
      written too, as identity weights with a linear activation, so `AutoModel.from_pretrained`
      creates no random weight and `pooler_output` is the final-norm CLS token.
      `mim_jax.teachers.load(out_dir)` reads it back like a DINO checkpoint.
  export_timm(params, vit, out_dir, head=None, labels=None) timm's folder format: config.json
      (`architecture`, `model_args`, `pretrained_cfg` with mean, std, crop_pct, interpolation,
      input_size, num_classes) and model.safetensors with timm's `VisionTransformer` names, so
      `timm.create_model("local-dir:" + out_dir, pretrained=True)` builds the model with the
      right data config.
  python -m mim_jax.export --workdir W [--step N] --format hf|timm --out DIR [--labels ...]

A hybrid ConvMAE student (`models.convvit`) is refused, in one error line before anything is
written: neither transformers nor timm has its architecture.

Neither needs torch: configs are plain JSON (transformers' config and image-processor classes
write theirs, without torch) and weights go through safetensors' numpy writer. Where torch is
installed (requirements-torch.txt), `self_check` loads the written directory back in transformers
strictly and compares its features with the student's (the CLI does it unless --no-check).

`params` are the student's parameters (`patch_embed`, `cls`, `block{i}`, `norm`, and
`pos_embedding` for posemb="learned"), with or without a {"params": ...} wrapper; `vit` is the
`ViT` module they belong to (its shape and switches). `head` is what
`mim_jax.objectives.classify.head_params` returns: {"head": {"kernel" [D, C], "bias" [C]}}, plus
"fc_norm": {"scale", "bias"} [D] for an average-pooling classifier.

Key maps, ours -> torch (`o` = out_kernel [H, Dh, D], `qkv` = qkv_kernel [D, 3, H, Dh]):
  patch_embed.kernel [p, p, C, D]  -> conv weight [D, C, p, p] (transpose 3, 2, 0, 1)
  Dense kernel [in, out]           -> linear weight [out, in]
  qkv[:, t] -> [D, H*Dh]           -> query/key/value weight [H*Dh, D] (HF), or stacked
                                      [3*H*Dh, D] (timm, rows in (t, head, dh) order)
  o -> [H*Dh, D]                   -> attention.output.dense / attn.proj weight [D, H*Dh]
  LayerNorm scale, bias            -> weight, bias
The fixed sin-cos position embedding is not a parameter of ours; it is written as the torch
models' learned `position_embeddings` / `pos_embed` (CLS row zeros). Our CLS input is cls +
pos[0], theirs the same sum, so nothing else moves.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import numpy as np

from mim_jax import checkpoint as ckpt_lib
from mim_jax import init_from
from mim_jax.convert import layout
from mim_jax.convert import names
from mim_jax.convert import scan
from mim_jax.data import normalization
from mim_jax.models.vit import ViT
from mim_jax.objectives import common

Params = Mapping[str, Any]

LN_EPS = 1e-6  # the student's LayerNorm epsilon (layers.Block default, ViT's final norm)
WEIGHTS_FILE = "model.safetensors"


# Pretraining-only inputs of the student (inpainting / robust-MAE mask tokens): not part of
# the encoder a downstream model runs, so they are left out of the export.
PRETRAINING_ONLY = ("mask_token", "mid_mask_token")


def _unwrap(params: Params) -> Params:
  """Drops a {"params": ...} wrapper and flax's partitioning boxes; a scanned student's stacked
  blocks are unstacked to `block{i}` (exports are always in the unscanned layout)."""
  params = nn.meta.unbox(params)
  if set(params) == {"params"}:
    params = params["params"]
  return scan.unstack_blocks(dict(params))


def _ln(p: Params) -> tuple[np.ndarray, np.ndarray]:
  return layout.host(p["scale"]), layout.host(p["bias"])


def check_student(params: Params, vit: ViT) -> None:
  """Refuses a tree that is not `vit`'s student (a classifier's full tree, wrong depth, ...)."""
  if "student" in params:
    raise ValueError("Pass the student's parameters (params['student']) and the head separately "
                     "(classify.head_params(params)), not the classifier's whole tree.")
  if getattr(vit, "rel_pos", "none") != "none":
    raise ValueError(f"Cannot export rel_pos={vit.rel_pos!r}: transformers' ViTModel and timm's "
                     "VisionTransformer have absolute position embeddings only.")
  clip_like = {k: getattr(vit, k) for k, v in (("act", "gelu"), ("ln_eps", LN_EPS),
                                                ("pre_norm", False)) if getattr(vit, k, v) != v}
  if clip_like:
    raise ValueError(f"Cannot export a student with {clip_like}: the ViTModel / timm export "
                     f"writes GELU, LayerNorm eps {LN_EPS} and no pre-norm.")
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
def hf_config(vit: ViT, num_labels: Optional[int] = None,
              labels: Optional[Sequence[str]] = None):
  """The transformers `ViTConfig` of the student (dropouts off, exact GELU, eps 1e-6); the
  encoder's pooler is linear (see `hf_state_dict`). Built without torch."""
  from transformers import ViTConfig  # pylint: disable=import-outside-toplevel
  kwargs = dict(hidden_size=vit.width, num_hidden_layers=vit.depth,
                num_attention_heads=vit.num_heads, intermediate_size=vit.mlp_dim,
                hidden_act="gelu", layer_norm_eps=LN_EPS, image_size=vit.image_size,
                patch_size=vit.patch, num_channels=3, qkv_bias=True, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0, pooler_act="linear",
                architectures=["ViTModel" if num_labels is None else
                               "ViTForImageClassification"])
  if num_labels is not None:
    names = check_labels(labels, num_labels) or [f"LABEL_{i}" for i in range(num_labels)]
    kwargs.update(num_labels=num_labels, id2label=dict(enumerate(names)),
                  label2id={n: i for i, n in enumerate(names)})
  return ViTConfig(**kwargs)


def hf_state_dict(params: Params, vit: ViT, head: Optional[Params] = None
                  ) -> dict[str, np.ndarray]:
  """The names transformers' `save_pretrained` writes for `ViTModel` (`encoder.layer.{i}.
  attention.attention.query`, ...; transformers 5 maps them to its in-memory names on load, older
  versions use them as they are), plus the pooler as identity; with a head, those of
  `ViTForImageClassification` (`vit.` prefix, `classifier`, no pooler)."""
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
      "embeddings.cls_token": layout.host(params["cls"]),
      "embeddings.position_embeddings": layout.position_embedding(params, vit)[None],
      "embeddings.patch_embeddings.projection.weight":
          layout.conv_weight(params["patch_embed"]["kernel"]),
      "embeddings.patch_embeddings.projection.bias": layout.host(params["patch_embed"]["bias"]),
  }
  sd["layernorm.weight"], sd["layernorm.bias"] = _ln(params["norm"])
  for i in range(vit.depth):
    sd.update(names.block_to_torch(params[f"block{i}"], names.VIT.at(i)))
  if pool is None:
    # pooler_output = pooler_act(dense(final-norm CLS)) = the final-norm CLS token itself.
    sd["pooler.dense.weight"] = np.eye(vit.width, dtype=np.float32)
    sd["pooler.dense.bias"] = np.zeros(vit.width, np.float32)
    return sd
  sd = {f"vit.{k}": v for k, v in sd.items()}
  sd["classifier.weight"] = layout.linear_weight(head["head"]["kernel"])
  sd["classifier.bias"] = layout.host(head["head"]["bias"])
  return sd


def _save_preprocessor(out_dir: str, image_size: int, crop_pct: float) -> None:
  """preprocessor_config.json reproducing the student's evaluation preprocessing: shorter side
  to image_size / crop_pct (bicubic), centre crop image_size, ImageNet mean/std. (transformers'
  ViT processor would squash the photo to a square with mean/std 0.5.)"""
  from transformers import CLIPImageProcessorPil  # pylint: disable=import-outside-toplevel
  CLIPImageProcessorPil(
      do_resize=True, size={"shortest_edge": normalization.eval_resize(image_size, crop_pct)},
      resample=3,  # bicubic
      do_center_crop=True, crop_size={"height": image_size, "width": image_size},
      do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
      image_mean=list(normalization.STUDENT_MEAN), image_std=list(normalization.STUDENT_STD),
      do_convert_rgb=True).save_pretrained(out_dir)


def _save_safetensors(sd: Mapping[str, np.ndarray], path: str) -> None:
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  # safetensors' numpy writer copies raw buffers: transposed views must be made contiguous.
  save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, path,
            metadata={"format": "pt"})


def export_hf(params: Params, vit_module: ViT, out_dir: str, *, head: Optional[Params] = None,
              labels: Optional[Sequence[str]] = None,
              crop_pct: float = normalization.CROP_PCT) -> str:
  """Writes a transformers checkpoint directory of the student (and CLS head); returns out_dir.

  Inputs of the torch model are the student's: ImageNet-normalised pixels, NCHW (the written
  preprocessor makes them from a photo). `labels` name the head's classes (id2label).
  """
  sd = hf_state_dict(params, vit_module, head)
  num_labels = None if head is None else _num_labels(head)
  config = hf_config(vit_module, num_labels, labels)
  os.makedirs(out_dir, exist_ok=True)
  config.save_pretrained(out_dir)
  _save_safetensors(sd, os.path.join(out_dir, WEIGHTS_FILE))
  _save_preprocessor(out_dir, vit_module.image_size, crop_pct)
  return out_dir


def check_labels(labels: Optional[Sequence[str]], num_labels: int) -> Optional[list[str]]:
  """`labels` as a list of `num_labels` distinct names (None stays None)."""
  if labels is None:
    return None
  labels = [str(n) for n in labels]
  if len(labels) != num_labels or len(set(labels)) != len(labels):
    raise ValueError(f"labels: {len(labels)} names ({len(set(labels))} distinct) for a head of "
                     f"{num_labels} classes; give one distinct name per class, in class order.")
  return labels


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
      "cls_token": layout.host(params["cls"]),
      "pos_embed": layout.position_embedding(params, vit)[None],
      "patch_embed.proj.weight": layout.conv_weight(params["patch_embed"]["kernel"]),
      "patch_embed.proj.bias": layout.host(params["patch_embed"]["bias"]),
  }
  for i in range(vit.depth):
    block, timm = params[f"block{i}"], names.TIMM.at(i)
    split = names.block_to_torch(block, timm)
    for kind in ("weight", "bias"):  # timm's one qkv linear: q, k, v rows stacked
      sd[f"{timm.prefix}attn.qkv.{kind}"] = np.concatenate(
          [split.pop(f"{part}.{kind}") for part in (timm.q, timm.k, timm.v)], axis=0)
    sd.update(split)
    if vit.layer_scale is not None:
      sd[f"{timm.prefix}ls1.gamma"] = layout.host(block["ls1"])
      sd[f"{timm.prefix}ls2.gamma"] = layout.host(block["ls2"])
  if pool == "avg":
    sd["fc_norm.weight"], sd["fc_norm.bias"] = _ln(head["fc_norm"])
  else:
    sd["norm.weight"], sd["norm.bias"] = _ln(params["norm"])
  if pool is not None:
    sd["head.weight"] = layout.linear_weight(head["head"]["kernel"])
    sd["head.bias"] = layout.host(head["head"]["bias"])
  return sd


# timm model names that exist, by (width, depth, heads, patch, image size). Any other student
# builds from vit_base_patch16_224 with its own model_args, which override the name's defaults.
_TIMM_NAMES = {(192, 12, 3, 16, 224): "vit_tiny_patch16_224",
               (384, 12, 6, 16, 224): "vit_small_patch16_224",
               (768, 12, 12, 16, 224): "vit_base_patch16_224",
               (768, 12, 12, 16, 384): "vit_base_patch16_384",
               (1024, 24, 16, 16, 224): "vit_large_patch16_224",
               (1280, 32, 16, 14, 224): "vit_huge_patch14_224"}


def timm_architecture(vit: ViT) -> str:
  key = (vit.width, vit.depth, vit.num_heads, vit.patch, vit.image_size)
  return _TIMM_NAMES.get(key, "vit_base_patch16_224")


def timm_config(vit: ViT, head: Optional[Params] = None,
                labels: Optional[Sequence[str]] = None, crop_pct: float = normalization.CROP_PCT
                ) -> dict[str, Any]:
  """timm's config.json of a local-dir / Hub folder: architecture, model_args and the
  pretrained_cfg timm's data config reads (the student's evaluation preprocessing)."""
  kwargs = timm_kwargs(vit, head)
  num_classes = kwargs["num_classes"]
  config = {
      "architecture": timm_architecture(vit),
      "num_classes": num_classes,
      "num_features": vit.width,
      "global_pool": kwargs["global_pool"],
      "model_args": kwargs,
      "pretrained_cfg": {
          "tag": "mim_jax", "custom_load": False,
          "input_size": [3, vit.image_size, vit.image_size], "fixed_input_size": True,
          "interpolation": "bicubic", "crop_pct": crop_pct, "crop_mode": "center",
          "mean": list(normalization.STUDENT_MEAN), "std": list(normalization.STUDENT_STD),
          "num_classes": num_classes,
          "pool_size": None, "first_conv": "patch_embed.proj", "classifier": "head",
      },
  }
  names = check_labels(labels, num_classes) if num_classes else None
  if names:
    config["label_names"] = names
  return config


def export_timm(params: Params, vit_module: ViT, out_dir: str, *, head: Optional[Params] = None,
                labels: Optional[Sequence[str]] = None, crop_pct: float = normalization.CROP_PCT
                ) -> dict[str, Any]:
  """Writes timm's folder (config.json + model.safetensors) at `out_dir`; returns the config.

  `timm.create_model("local-dir:" + out_dir, pretrained=True)` loads it (timm >= 1.0.20), or by
  hand: `VisionTransformer(**config["model_args"])` + `load_state_dict(load_file(...))`.
  """
  config = timm_config(vit_module, head, labels, crop_pct)
  sd = timm_state_dict(params, vit_module, head)
  os.makedirs(out_dir, exist_ok=True)
  _save_safetensors(sd, os.path.join(out_dir, WEIGHTS_FILE))
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(config, f, indent=2)
  return config


# --------------------------------------------------------------------------------------------
# Self-check (needs torch) and the command line.
# --------------------------------------------------------------------------------------------
class ExportError(ValueError):
  """The written export does not load strictly or does not compute the student's features."""


def _reference(params: Params, vit: ViT, head: Optional[Params], x: np.ndarray) -> np.ndarray:
  """The student's final-norm tokens [B, 1 + N, D], or with a CLS head its logits [B, C]."""
  plain = vit.clone(scan=False) if getattr(vit, "scan", False) else vit  # block{i} layout
  out, _ = plain.apply({"params": _unwrap(params)}, x, train=False)
  out = np.asarray(out, np.float64)
  if head is None:
    return out
  head = nn.meta.unbox(head)["head"]
  return out[:, 0] @ np.asarray(head["kernel"], np.float64) + np.asarray(head["bias"])


def self_check(out_dir: str, params: Params, vit: ViT, head: Optional[Params] = None,
               atol: float = 1e-4) -> float:
  """Loads a transformers export back with `AutoModel` (or the classifier) and compares its
  outputs with the student's on random images; returns the largest difference. Needs torch."""
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  auto = transformers.AutoModel if head is None else transformers.AutoModelForImageClassification
  model, info = auto.from_pretrained(out_dir, output_loading_info=True,
                                     attn_implementation="eager")
  wrong = {k: v for k, v in info.items()
           if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
  if wrong:
    raise ExportError(f"{out_dir} does not load strictly in transformers: {wrong}.")
  x = np.random.default_rng(0).normal(size=(2, vit.image_size, vit.image_size, 3))
  x = x.astype(np.float32)
  with torch.no_grad():
    out = model.eval()(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
  theirs = out.last_hidden_state if head is None else out.logits
  err = float(np.abs(_reference(params, vit, head, x) - theirs.numpy()).max())
  if head is None:  # the pooler is the identity on the final-norm CLS token
    err = max(err, float((out.pooler_output - out.last_hidden_state[:, 0]).abs().max()))
  if not err <= atol:
    raise ExportError(f"{out_dir}: transformers' outputs differ from the student's by {err:.2e} "
                      f"(> {atol:.0e}).")
  return err


def dataset_labels(config_data: Any) -> Optional[list[str]]:
  """The class names of the run's dataset when its TFDS info has them, else None."""
  # Imported here: tensorflow (seconds to import) only for a classifier's labels.
  from mim_jax.data import input_pipeline  # pylint: disable=import-outside-toplevel
  try:
    feature = input_pipeline.get_builder(config_data.name, config_data.get("data_dir")
                                         ).info.features["label"]
    return list(feature.names)
  except Exception:  # pylint: disable=broad-except  # no dataset here, or no named labels
    return None


def parse_labels(arg: Optional[str]) -> Optional[list[str]]:
  """--labels: "a,b,c", or "@file" with one name per line."""
  if not arg:
    return None
  if arg.startswith("@"):
    with open(arg[1:]) as f:
      return [line.strip() for line in f if line.strip()]
  return [n.strip() for n in arg.split(",")]


def export_workdir(workdir: str, out_dir: str, fmt: str, *, step: Optional[int] = None,
                   labels: Optional[Sequence[str]] = None, check: bool = True) -> str:
  """Exports the student (and a classify run's head) of a workdir's checkpoint; returns what it
  did, in one line."""
  if fmt not in ("hf", "timm"):
    raise ValueError(f"--format {fmt!r}: use hf (transformers) or timm.")
  source = init_from.check(workdir if step is None else f"{workdir}:{step}")
  if source.kind != "workdir":
    raise ValueError(f"--workdir {workdir!r} is not a run's workdir (no checkpoints/).")
  config = ckpt_lib.read_run_config(workdir)
  vit = common.make_student(config, drop_path=0.0, dtype=np.float32)
  if not isinstance(vit, ViT):
    raise ValueError(f"--format {fmt}: the student {config.student.variant!r} is the hybrid "
                     "ConvMAE ConvViT, which neither transformers nor timm implements; use the "
                     "workdir itself (init_from, kNN, analysis read it).")
  params = init_from.read_workdir_state(source.path, source.step)["params"]
  head = None
  if config.method == "classify":
    head = {k: v for k, v in params.items() if k != "student"}
    labels = labels if labels is not None else dataset_labels(config.data)
  elif labels is not None:
    raise ValueError("--labels names a classifier's classes; this run has no head.")
  student = params["student"]
  crop_pct = config.data.get("crop_pct", normalization.CROP_PCT)
  if fmt == "hf":
    export_hf(student, vit, out_dir, head=head, labels=labels, crop_pct=crop_pct)
  else:
    export_timm(student, vit, out_dir, head=head, labels=labels, crop_pct=crop_pct)
  what = f"step {source.step} of {workdir} -> {fmt} export in {out_dir}"
  if check and fmt == "hf":
    err = self_check(out_dir, student, vit, head)
    what += f" (self-check: transformers loads it strictly, max diff {err:.1e})"
  return what


def main(argv: Optional[Sequence[str]] = None) -> int:
  import argparse  # pylint: disable=import-outside-toplevel
  import importlib.util  # pylint: disable=import-outside-toplevel
  p = argparse.ArgumentParser(prog="python -m mim_jax.export",
                              description="Export a run's student to transformers or timm.")
  p.add_argument("--workdir", required=True, help="A run's directory (checkpoints/, config.json).")
  p.add_argument("--step", type=int, default=None, help="Checkpoint step; default the latest.")
  p.add_argument("--format", dest="fmt", choices=("hf", "timm"), required=True)
  p.add_argument("--out", required=True, help="Output directory.")
  p.add_argument("--labels", default=None,
                 help="Class names of a classifier: 'a,b,c' or @file (one per line); default "
                      "the dataset's names where its TFDS info has them.")
  p.add_argument("--no-check", dest="check", action="store_false",
                 help="Skip loading the transformers export back in torch (done when torch is "
                      "installed).")
  args = p.parse_args(argv)
  check = args.check and importlib.util.find_spec("torch") is not None
  if args.check and not check:
    print("note: torch is not installed (requirements-torch.txt): the export is written without "
          "its self-check.")
  try:
    print(export_workdir(args.workdir, args.out, args.fmt, step=args.step,
                         labels=parse_labels(args.labels), check=check))
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}")
    return 1
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
