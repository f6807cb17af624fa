"""`load(spec)`: a Teacher from a checkpoint directory or a known name.

Known names resolve through the local Hugging Face cache only (never the network): the cache is
$HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub. Missing weights give an error
that says how to put them there.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from mim_jax.teachers import checkpoint_io as io
from mim_jax.teachers import clip, vit
from mim_jax.teachers.network import Arch, TeacherNet, param_shapes
from mim_jax.teachers.teacher import DEFAULT_MEAN_STD, Teacher


@dataclasses.dataclass(frozen=True)
class Known:
  repo_id: str
  kind: str
  arch: Arch  # the real model's shape, for random-weight stand-ins (tests, benchmarks, demos)


KNOWN: dict[str, Known] = {
    "clip_b16": Known("openai/clip-vit-base-patch16", "clip", Arch(
        patch=16, grid=14, width=768, depth=12, num_heads=12, mlp_dim=3072, act="quick_gelu",
        ln_eps=1e-5, patch_bias=False, pre_norm=True, proj_dim=512)),
    "clip_l14": Known("openai/clip-vit-large-patch14", "clip", Arch(
        patch=14, grid=16, width=1024, depth=24, num_heads=16, mlp_dim=4096, act="quick_gelu",
        ln_eps=1e-5, patch_bias=False, pre_norm=True, proj_dim=768)),
    # ln_eps is transformers' ViTConfig default; load() reads the checkpoint's own value.
    "dino_b16": Known("facebook/dino-vitb16", "vit", Arch(
        patch=16, grid=14, width=768, depth=12, num_heads=12, mlp_dim=3072, act="gelu",
        ln_eps=1e-12)),
}

Converter = Callable[[Mapping[str, Any], Mapping[str, np.ndarray]], tuple[Arch, dict]]
Shape = Callable[[Mapping[str, Any]], Arch]  # the Arch from config.json alone

# model_type in config.json -> (kind, converter, shape).
CONVERTERS: dict[str, tuple[str, Converter, Shape]] = {
    "vit": ("vit", vit.convert, vit.arch_from_config),
    "clip_vision_model": ("clip", clip.convert, clip.arch_without_weights),
    "clip": ("clip", clip.convert, clip.arch_without_weights),
}


def load(spec: str, *, dtype: str = "float32", param_dtype: Optional[str] = None,
         abstract: bool = False) -> Teacher:
  """A Teacher from a checkpoint directory, a known name (KNOWN) or a cached repo id.

  dtype: matmul input dtype, "float32" or "bfloat16" (accumulation is always float32).
  param_dtype: storage dtype of `teacher.params`; defaults to `dtype`.
  abstract: the same Teacher with `jax.ShapeDtypeStruct` parameters, from the checkpoint's
  config.json (and preprocessor config) alone: no weight is read or created. A known name needs
  no checkpoint then: its KNOWN shape and its kind's normalisation stand in.
  """
  dtype_name = _dtype_name(dtype)
  if abstract and spec in KNOWN and not os.path.isdir(spec):
    kind, arch, preprocessor = KNOWN[spec].kind, KNOWN[spec].arch, {}
  else:
    directory = resolve(spec)
    config = io.read_config(directory)
    model_type = config.get("model_type")
    if model_type not in CONVERTERS:
      raise io.CheckpointError(f"{directory!r}: model_type {model_type!r} is not handled; "
                               f"handled: {sorted(CONVERTERS)}.")
    kind, convert, shape = CONVERTERS[model_type]
    if abstract:
      arch = shape(config)
    else:
      arch, params = convert(config, io.read_weights(directory))
      check_params(arch, params)
    preprocessor = io.read_preprocessor(directory)
  if abstract:
    store = jnp.dtype(param_dtype or dtype)
    params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, store), param_shapes(arch))
  else:
    params = to_device(params, param_dtype or dtype)
  mean, std = mean_std(preprocessor, kind)
  return Teacher(name=spec, kind=kind, arch=arch, mean=mean, std=std, dtype=dtype_name,
                 params=params)


def shape(spec: str) -> tuple[str, Arch]:
  """(kind, Arch) of a known name or a checkpoint directory, from its config.json alone (no
  weight is read): `load(spec, abstract=True)`'s."""
  teacher = load(spec, abstract=True)
  return teacher.kind, teacher.arch


def random_teacher(name_or_kind: str, arch: Optional[Arch] = None, *, seed: int = 0,
                   dtype: str = "float32", param_dtype: Optional[str] = None) -> Teacher:
  """A teacher with random weights: a known name's shape, or kind ("vit" | "clip") and `arch`."""
  if name_or_kind in KNOWN:
    known = KNOWN[name_or_kind]
    kind, arch = known.kind, arch or known.arch
  elif name_or_kind in DEFAULT_MEAN_STD and arch is not None:
    kind = name_or_kind
  else:
    raise ValueError(f"random_teacher needs a known name {sorted(KNOWN)} or a kind "
                     f"{sorted(DEFAULT_MEAN_STD)} with an Arch, got {name_or_kind!r}.")
  images = jnp.zeros((1, arch.image_size, arch.image_size, 3), jnp.float32)
  params = jax.jit(TeacherNet(arch).init)(jax.random.key(seed), images)["params"]
  mean, std = DEFAULT_MEAN_STD[kind]
  return Teacher(name=f"random_{name_or_kind}", kind=kind, arch=arch, mean=mean, std=std,
                 dtype=_dtype_name(dtype), params=to_device(params, param_dtype or dtype))


# --------------------------------------------------------------------------------------------
# Resolving names.
# --------------------------------------------------------------------------------------------
def hub_cache_dir() -> str:
  """The Hugging Face hub cache, read from the environment at call time."""
  if os.environ.get("HF_HUB_CACHE"):
    return os.environ["HF_HUB_CACHE"]
  home = os.environ.get("HF_HOME") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface")
  return os.path.join(home, "hub")


def resolve(spec: str) -> str:
  """A checkpoint directory for `spec`: the directory itself, or a cache snapshot."""
  if os.path.isdir(spec):
    return spec
  if spec in KNOWN:
    repo_id = KNOWN[spec].repo_id
  elif spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
    repo_id = spec
  else:
    raise FileNotFoundError(f"Teacher {spec!r} is neither a checkpoint directory nor a known name "
                            f"{sorted(KNOWN)}.")
  directory = _cached_snapshot(repo_id)
  if directory is None or not io.has_weights(directory) or not os.path.isfile(
      os.path.join(directory, io.CONFIG_FILE)):
    raise FileNotFoundError(_how_to_place(spec, repo_id, directory))
  return directory


def _cached_snapshot(repo_id: str) -> Optional[str]:
  import huggingface_hub  # pylint: disable=import-outside-toplevel
  try:
    return huggingface_hub.snapshot_download(repo_id, cache_dir=hub_cache_dir(),
                                             local_files_only=True)
  except Exception:  # pylint: disable=broad-except
    # Whatever the hub library raises for "not cached" (its exception types change between
    # versions), the answer is the same: the weights are not here.
    return None


def _how_to_place(spec: str, repo_id: str, found: Optional[str]) -> str:
  cache = hub_cache_dir()
  state = (f"its cache snapshot {found!r} lacks {io.CONFIG_FILE} or {io.SAFETENSORS_FILE}"
           if found else f"it is not in the local Hugging Face cache {cache!r}")
  return (
      f"Teacher {spec!r} ({repo_id}): {state}, and this code never downloads. Place the weights "
      f"on a machine with network access into the same cache (HF_HOME or HF_HUB_CACHE): "
      f"`HF_HUB_CACHE={cache} huggingface-cli download {repo_id} "
      f"config.json {io.SAFETENSORS_FILE} {io.PREPROCESSOR_FILE}` (newer huggingface_hub: "
      f"`hf download {repo_id} ...` with the same arguments), then copy the cache directory "
      f"{cache}/models--{repo_id.replace('/', '--')} here; or load a plain directory holding "
      f"{io.CONFIG_FILE} and {io.SAFETENSORS_FILE}: mim_jax.teachers.load('/path/to/dir').")


# --------------------------------------------------------------------------------------------
# Helpers.
# --------------------------------------------------------------------------------------------
def mean_std(preprocessor: Mapping[str, Any], kind: str
             ) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """The teacher's normalisation: preprocessor_config.json's image_mean/std, else the kind's."""
  mean, std = DEFAULT_MEAN_STD[kind]
  mean = tuple(float(v) for v in preprocessor.get("image_mean", mean))
  std = tuple(float(v) for v in preprocessor.get("image_std", std))
  if len(mean) != 3 or len(std) != 3:
    raise io.CheckpointError(f"preprocessor image_mean/image_std must have 3 channels, got "
                             f"{mean} / {std}.")
  return mean, std


def check_params(arch: Arch, params: Mapping[str, Any]) -> None:
  """The converted tree must be exactly TeacherNet(arch)'s (a converter bug otherwise)."""
  want = param_shapes(arch)
  want_flat = {jax.tree_util.keystr(p): tuple(v.shape)
               for p, v in jax.tree_util.tree_leaves_with_path(want)}
  got_flat = {jax.tree_util.keystr(p): tuple(np.shape(v))
              for p, v in jax.tree_util.tree_leaves_with_path(params)}
  if want_flat != got_flat:
    diff = sorted(set(want_flat.items()) ^ set(got_flat.items()))
    raise AssertionError(f"Converted parameters do not fit the network: {diff[:8]}")


def to_device(params: Any, dtype: str) -> Any:
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.dtype(dtype)), params)


def _dtype_name(dtype: Any) -> str:
  name = jnp.dtype(dtype).name
  if name not in ("float32", "bfloat16"):
    raise ValueError(f"Teacher dtype must be float32 or bfloat16, got {dtype!r}.")
  return name
