"""`config.init_from`: initialise the student of a run from another run's or a released student.

Sources (`spec`):
  <workdir>        a pretraining (or fine-tuning) workdir of this project: its latest checkpoint;
  <workdir>:<step> that step's checkpoint (only `params["student"]` is taken);
  <directory>      a transformers `ViTModel` / `ViTMAEModel` / `BeitModel` (or their task
                   models') checkpoint: config.json + model.safetensors / pytorch_model.bin;
                   or a CLIP vision tower (`CLIPVisionModel`, `...WithProjection`, or the
                   vision half of a `CLIPModel`), see "CLIP" below;
  <name>           a released tower of `teachers.zoo.KNOWN` (clip_b16, clip_l14, dino_b16), from
                   the local Hugging Face cache as the teachers find it;
  <file>           a PyTorch state dict, .safetensors or .pth/.pt/.bin: timm `vit_*` / `beit_*`,
                   MAE's released .pth (under "model"), BEiT / BEiT v2's .pth (under "model" or
                   "module": q/v biases, gamma_1/2 layer scale, shared or per-block relative
                   position bias tables).
Torch names are first brought to timm's ViT names (`convert.names.canonical_*`), then one map
fills the student (`_timm_to_student`); the layout changes are `convert.layout`'s. Everything the
student does not use (heads, decoders, mask tokens, teacher weights, the optimizer) is listed
once as dropped. A shared relative position bias fills every block's table when the student has one per
block (BEiT's start of fine-tuning); a fixed sin-cos student checks the source's embedding equals
its own. The load is strict: every
student tensor is filled or the run stops naming what is missing; a position embedding on another
grid is resized bicubically (torch's kernel, `convert.resize`); any other shape difference stops
the run. `check(spec)` runs before anything is written, so a bad path fails in one line.

CLIP: the checkpoint is read by the teacher's converter (`teachers.clip.convert`: one name table
for both uses). The student must have CLIP's architecture where CLIP differs from the default
student: `student.act="quick_gelu"` (or what the checkpoint's hidden_act says),
`student.ln_eps=1e-5` (its layer_norm_eps), `student.pre_norm=True` (its pre_layrnorm) and
`student.posemb="learned"`; otherwise the load stops in one line naming those settings. Three
differences are mapped exactly, so the student computes CLIP's features: CLIP has no patch
bias and normalises pixels with its own mean/std, so its patch kernel is scaled per input
channel by student std / CLIP std and the student's patch bias takes the constant the two
normalisations differ by (CLIP's function of the student's input); a student's relative position
tables start at zero and its layer-scale gains at one (CLIP has neither). The visual projection is
dropped.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Mapping, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax import traverse_util

from mim_jax.convert import layout
from mim_jax.convert import names
from mim_jax.convert import scan
from mim_jax.convert import resize
from mim_jax.models import vit as vit_lib
from mim_jax.teachers import checkpoint_io as io
from mim_jax.teachers import clip
from mim_jax.teachers import zoo

PyTree = Any


TORCH_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")

class InitFromError(ValueError):
  """A source that cannot initialise the student; the message is one line naming the fix."""


@dataclasses.dataclass(frozen=True)
class Source:
  kind: str  # "workdir" | "transformers" | "clip" | "torch"
  path: str
  step: Optional[int] = None

  def describe(self) -> str:
    return f"{self.kind} {self.path}" + (f" step {self.step}" if self.step is not None else "")


def _checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, "checkpoints")


def saved_steps(workdir: str) -> list[int]:
  """The steps `workdir` holds a finished checkpoint of, ascending ([] for none)."""
  d = epath.Path(_checkpoint_dir(workdir))
  if not d.is_dir():
    return []
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit())


def has_checkpoint(workdir: str) -> bool:
  """Whether `workdir` holds a saved step (then a run resumes from it, not from init_from)."""
  return bool(saved_steps(workdir))


def check(spec: str) -> Source:
  """The source `spec` names, with the step resolved; InitFromError when it cannot be used."""
  path, step = spec, None
  m = re.fullmatch(r"(.+):(\d+)", spec)
  if m and not os.path.exists(spec):
    path, step = m.group(1), int(m.group(2))
  if not os.path.exists(path) and spec in zoo.KNOWN:  # a released tower, from the local cache
    try:
      path = zoo.resolve(spec)
    except FileNotFoundError as e:
      raise InitFromError(f"init_from {spec!r}: {e}") from None
  if not os.path.exists(path):
    raise InitFromError(f"init_from {spec!r}: no such file or directory; give a pretraining "
                        f"workdir (optionally workdir:step), a transformers checkpoint directory "
                        f"(or a name of {sorted(zoo.KNOWN)} in the Hugging Face cache) or a "
                        f"state dict file ({', '.join(TORCH_SUFFIXES)}).")
  if os.path.isdir(path) and (step is not None or os.path.isdir(_checkpoint_dir(path))):
    steps = saved_steps(path)
    if not steps:
      raise InitFromError(f"init_from {spec!r}: {_checkpoint_dir(path)} holds no checkpoint; "
                          f"give a workdir of a run that saved one.")
    if step is None:
      step = steps[-1]
    elif step not in steps:
      raise InitFromError(f"init_from {spec!r}: no checkpoint at step {step}; "
                          f"saved steps: {steps}.")
    return Source("workdir", os.path.abspath(path), step)
  if step is not None:
    raise InitFromError(f"init_from {spec!r}: ':step' applies to a workdir only.")
  if os.path.isdir(path):
    if io.has_weights(path) and os.path.isfile(os.path.join(path, io.CONFIG_FILE)):
      is_clip = io.read_config(path).get("model_type") in clip.MODEL_TYPES
      return Source("clip" if is_clip else "transformers", os.path.abspath(path))
    raise InitFromError(f"init_from {spec!r}: neither a workdir with checkpoints/ nor a "
                        f"transformers checkpoint (config.json + weights).")
  if path.endswith(TORCH_SUFFIXES):
    return Source("torch", os.path.abspath(path))
  raise InitFromError(f"init_from {spec!r}: unknown file type; give a workdir, a transformers "
                      f"directory or a state dict ending in {', '.join(TORCH_SUFFIXES)}.")


def read_workdir_state(workdir: str, step: int) -> dict[str, Any]:
  """The saved train state of `workdir` at `step` as host numpy arrays (no mesh needed)."""
  item = epath.Path(_checkpoint_dir(workdir)) / str(step) / "state"
  handler = ocp.PyTreeCheckpointHandler()
  tree = handler.metadata(item).tree
  target = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  return handler.restore(item, args=ocp.args.PyTreeRestore(restore_args=target))


def _read_workdir(source: Source) -> tuple[dict[str, np.ndarray], list[str]]:
  """(flat student weights {"a/b/c": array}, dropped top-level names) of a workdir checkpoint."""
  restored = read_workdir_state(source.path, source.step)
  params = restored.get("params", {})
  if "student" not in params:
    raise InitFromError(f"init_from {source.describe()}: its params hold no 'student' "
                        f"(found {sorted(params or restored)}).")
  student = scan.unstack_blocks(dict(params["student"]))  # a scanned run's stack: block{i}
  flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(student).items()}
  dropped = [f"params/{k}" for k in params if k != "student"] + [
      k for k in restored if k not in ("params", "step")]
  return flat, dropped


def _read_torch_file(path: str) -> dict[str, np.ndarray]:
  if path.endswith(".safetensors"):
    return io._read_safetensors(path)  # pylint: disable=protected-access
  import argparse  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  # Released training checkpoints carry their argparse arguments beside the weights.
  with torch.serialization.safe_globals([argparse.Namespace]):
    state = torch.load(path, map_location="cpu", weights_only=True)
  for key in ("model", "module", "state_dict"):
    if isinstance(state, dict) and isinstance(state.get(key), dict):
      state = state[key]
      break
  return {k: io._to_numpy(v, torch) for k, v in state.items()  # pylint: disable=protected-access
          if isinstance(v, torch.Tensor)}


def _timm_to_student(w: Mapping[str, np.ndarray], student: Mapping[str, Any], vit: Any,
                     source: Source) -> tuple[dict[str, np.ndarray], list[str]]:
  """timm ViT names -> flat student names (shapes from the student tree); (weights, unused)."""
  template = traverse_util.flatten_dict(dict(student), sep="/")
  used: set[str] = set()

  def take(name):
    used.add(name)
    return w[name]

  out: dict[str, np.ndarray] = {}

  def put(ours, theirs, fn=lambda x: x):
    if theirs in w:
      value = fn(take(theirs))
      shape = tuple(template[ours].shape) if ours in template else None
      if shape is not None and value.shape != shape and value.size == int(np.prod(shape)) \
          and not ours.endswith("pos_embedding"):
        value = value.reshape(shape)  # [3*H*Dh] -> [3, H, Dh] and the like
      out[ours] = value

  heads = vit.num_heads
  put("patch_embed/kernel", "patch_embed.proj.weight", layout.conv_to_hwio)
  put("patch_embed/bias", "patch_embed.proj.bias")
  put("cls", "cls_token")
  put("mask_token", "mask_token")
  put("norm/scale", "norm.weight")
  put("norm/bias", "norm.bias")
  for i in range(vit.depth):
    p, b = f"blocks.{i}.", f"block{i}/"
    for ours, theirs in (("ln1", "norm1"), ("ln2", "norm2")):
      put(f"{b}{ours}/scale", f"{p}{theirs}.weight")
      put(f"{b}{ours}/bias", f"{p}{theirs}.bias")
    put(f"{b}attn/qkv_kernel", f"{p}attn.qkv.weight",
        lambda x: layout.fused_qkv(*np.split(x, 3, axis=0), heads))
    put(f"{b}attn/qkv_bias", f"{p}attn.qkv.bias")
    put(f"{b}attn/out_kernel", f"{p}attn.proj.weight", lambda x: layout.out_kernel(x, heads))
    put(f"{b}attn/out_bias", f"{p}attn.proj.bias")
    for fc in ("fc1", "fc2"):
      put(f"{b}mlp/{fc}/kernel", f"{p}mlp.{fc}.weight", layout.linear_to_kernel)
      put(f"{b}mlp/{fc}/bias", f"{p}mlp.{fc}.bias")
    put(f"{b}ls1", f"{p}ls1.gamma")
    put(f"{b}ls2", f"{p}ls2.gamma")
    put(f"rel_pos_bias_{i}/table", f"{p}attn.relative_position_bias_table")
  put("rel_pos_bias/table", "rel_pos_bias.relative_position_bias_table")
  if "pos_embed" in w:
    pos = take("pos_embed")[0]
    if "pos_embedding" in template:
      out["pos_embedding"] = pos
    else:
      _check_fixed_posemb(pos, vit, source)
  return out, sorted(set(w) - used)


def _check_clip_architecture(arch: Any, vit: Any, source: Source) -> None:
  """The student must compute what CLIP computes, up to the exactly mapped differences."""
  want = {"act": arch.act, "ln_eps": arch.ln_eps, "pre_norm": arch.pre_norm,
          "posemb": "learned"}
  have = {k: getattr(vit, k, None) for k in want}  # (a hybrid student has none of them)
  wrong = {k: v for k, v in want.items() if have[k] != v}
  if wrong:
    raise InitFromError(
        f"init_from {source.describe()}: the student cannot represent this CLIP vision tower "
        f"({', '.join(f'{k}={have[k]!r}' for k in wrong)} against CLIP's "
        f"{', '.join(f'{k}={v!r}' for k, v in wrong.items())}); set "
        f"{' '.join(f'--config.student.{k}={v}' for k, v in wrong.items())}.")


def _read_clip(source: Source, student: Mapping[str, Any], vit: Any
               ) -> tuple[dict[str, np.ndarray], list[str]]:
  """(flat student weights, dropped names) of a CLIP vision checkpoint (see the module doc)."""
  try:
    arch, params = clip.convert(io.read_config(source.path), io.read_weights(source.path))
    mean, std = zoo.mean_std(io.read_preprocessor(source.path), "clip")
  except io.CheckpointError as e:
    raise InitFromError(f"init_from {source.describe()}: {e}") from None
  _check_clip_architecture(arch, vit, source)
  flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}
  dropped = sorted(k for k in flat if k.startswith("proj/"))
  out = {k: v for k, v in flat.items() if not k.startswith("proj/")}
  out["patch_embed/kernel"], out["patch_embed/bias"] = layout.clip_patch_embedding(
      out["patch_embed/kernel"], mean, std)
  template = traverse_util.flatten_dict(dict(student), sep="/")
  for name, leaf in template.items():  # what CLIP lacks, at the value that changes nothing
    if re.fullmatch(r"rel_pos_bias(_\d+)?/table", name):
      out[name] = np.zeros(leaf.shape, np.float32)
    elif re.fullmatch(r"block\d+/ls[12]", name):
      out[name] = np.ones(leaf.shape, np.float32)
  return out, dropped


def _check_fixed_posemb(pos: np.ndarray, vit: Any, source: Source) -> None:
  """A student without learned position embedding must see the same one the source used."""
  own = layout.position_embedding({}, vit)
  if pos.shape != own.shape:
    pos = _resize(pos, own.shape, source)
  if not np.allclose(pos, own, atol=1e-4):
    raise InitFromError(f"init_from {source.describe()}: its position embedding is not this "
                        f"student's fixed posemb={vit.posemb!r}; set student.posemb='learned'.")


def read(source: Source, student: Mapping[str, Any], vit: Any
         ) -> tuple[dict[str, np.ndarray], list[str]]:
  """(flat student weights, names of what the source holds besides them)."""
  if source.kind == "workdir":
    weights, dropped = _read_workdir(source)
  elif source.kind == "transformers":
    w = names.canonical_transformers(io.read_weights(source.path))
    weights, dropped = _timm_to_student(w, student, vit, source)
  elif source.kind == "clip":
    weights, dropped = _read_clip(source, student, vit)
  elif source.kind == "torch":
    w = _read_torch_file(source.path)
    w = names.canonical_beit(w) if names.is_beit(w) else w
    weights, dropped = _timm_to_student(w, student, vit, source)
  else:
    raise InitFromError(f"init_from: unknown source kind {source.kind!r}.")
  return _unshare(weights, student, vit.depth), dropped


def _unshare(weights: dict[str, np.ndarray], student: Mapping[str, Any], depth: int
             ) -> dict[str, np.ndarray]:
  """A shared relative position bias table copied to every block's table when the student has
  one per block (`convert.layout.unshare_relative_position_bias`); otherwise `weights` as given."""
  if "rel_pos_bias/table" not in weights or "rel_pos_bias_0" not in student:
    return weights
  tree = layout.unshare_relative_position_bias(
      traverse_util.unflatten_dict(weights, sep="/"), depth)
  return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree, sep="/").items()}


def _fit(name: str, value: np.ndarray, shape: tuple[int, ...], source: Source) -> np.ndarray:
  if value.shape == tuple(shape):
    return value
  if name.endswith("pos_embedding") and value.ndim == len(shape) and value.shape[-1] == shape[-1]:
    return _resize(value, shape, source)
  raise InitFromError(f"init_from {source.describe()}: {name} has shape {value.shape}, the "
                      f"student needs {tuple(shape)}; use a source with the student's variant.")


def _resize(value: np.ndarray, shape: tuple[int, ...], source: Source) -> np.ndarray:
  """A position embedding on the student's grid (`convert.resize.resize_pos_embedding`)."""
  try:
    return resize.resize_pos_embedding(value, shape)
  except ValueError as e:
    raise InitFromError(f"init_from {source.describe()}: {e}") from None


def merge(student: Mapping[str, Any], weights: Mapping[str, np.ndarray], source: Source
          ) -> tuple[dict[str, Any], list[str]]:
  """The student tree with every leaf taken from `weights`; (tree, unused weight names).

  InitFromError names the student tensors the source lacks."""
  flat = traverse_util.flatten_dict(dict(student), sep="/")
  missing = sorted(k for k in flat if k not in weights)
  if missing:
    raise InitFromError(f"init_from {source.describe()}: the source lacks {len(missing)} student "
                        f"tensors: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}.")
  out = {k: _fit(k, np.asarray(weights[k]), tuple(v.shape), source).astype(v.dtype)
         if hasattr(v, "dtype") else weights[k] for k, v in flat.items()}
  unused = sorted(k for k in weights if k not in flat)
  return traverse_util.unflatten_dict(out, sep="/"), unused


def summarize(names: list[str], most: int = 3) -> list[str]:
  """Names for a log line: a top-level module with more than `most` tensors (a teacher, a
  decoder) as one "prefix.* (n tensors)", the rest as they are."""
  groups: dict[str, list[str]] = {}
  for name in names:
    groups.setdefault(re.split(r"[./]", name, maxsplit=1)[0], []).append(name)
  out = []
  for prefix, members in groups.items():
    sep = members[0][len(prefix):len(prefix) + 1]
    out += ([f"{prefix}{sep}* ({len(members)} tensors)"] if len(members) > most else members)
  return out


def load_student(spec: str, student: Mapping[str, Any], vit: Any) -> dict[str, Any]:
  """The student parameters (host numpy, same tree as `student`: arrays or ShapeDtypeStructs,
  whose shapes and dtypes are used) of the ViT module `vit`, initialised from `spec`.

  Sources are read in the unscanned `block{i}` layout; a scanned student (`student.scan`) gets
  them stacked (`convert.scan.stack_blocks`) at the end, so any source fills either student."""
  source = check(spec)
  template = scan.unstack_blocks(dict(student))
  weights, dropped = read(source, template, vit)
  tree, unused = merge(template, weights, source)
  tree = scan.restack(tree, vit_lib.stack_starts(student))
  logging.info("init_from: loaded %d student tensors from %s", len(weights) - len(unused),
               source.describe())
  if unused or dropped:
    logging.info("init_from: dropped (not part of the student): %s",
                 ", ".join(summarize(dropped + unused)))
  return tree
