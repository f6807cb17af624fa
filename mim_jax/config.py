"""Config helpers: the ViT size table, variant codes, durations, and config validation.

Configs themselves live in `configs/` as Python files with `get_config(arg)`.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
from typing import Any, Mapping, Optional

import ml_collections


@dataclasses.dataclass(frozen=True)
class Size:
  width: int
  depth: int
  heads: int
  mlp_dim: int


# One table for every ViT size in the codebase (students, decoders, teachers' shapes).
# "nano" and "micro" are test/demo sizes that train in seconds on a CPU.
SIZES: dict[str, Size] = {
    "nano": Size(width=32, depth=2, heads=2, mlp_dim=64),
    "micro": Size(width=64, depth=4, heads=4, mlp_dim=128),
    "mini": Size(width=128, depth=6, heads=4, mlp_dim=512),
    "Ti": Size(width=192, depth=12, heads=3, mlp_dim=768),
    "S": Size(width=384, depth=12, heads=6, mlp_dim=1536),
    "B": Size(width=768, depth=12, heads=12, mlp_dim=3072),
    "L": Size(width=1024, depth=24, heads=16, mlp_dim=4096),
    "H": Size(width=1280, depth=32, heads=16, mlp_dim=5120),
}


@dataclasses.dataclass(frozen=True)
class ConvSize:
  """A hybrid (ConvMAE "ConvViT") size: two masked-convolution stages at 1/4 and 1/8, then
  `depths[2]` transformer blocks at 1/16 of width `widths[2]` (`mim_jax.models.convvit`)."""
  widths: tuple[int, int, int]
  depths: tuple[int, int, int]
  heads: int
  mlp_ratio: int = 4

  @property
  def transformer(self) -> Size:
    return Size(width=self.widths[2], depth=self.depths[2], heads=self.heads,
                mlp_dim=self.mlp_ratio * self.widths[2])


# Hybrid sizes, variant "Conv<size>/16": base from ConvMAE's public code
# (models_convmae.py `convmae_convvit_base_patch16`); "nano" is a test/demo size. The total
# stride of the stem is 4 * 2 * 2 = 16, the only patch a hybrid variant may name.
CONV_PREFIX = "Conv"
CONV_PATCH = 16
CONV_SIZES: dict[str, ConvSize] = {
    "nano": ConvSize(widths=(8, 16, 32), depths=(1, 1, 2), heads=2),
    "B": ConvSize(widths=(256, 384, 768), depths=(2, 2, 11), heads=12),
}


def is_hybrid(variant: str) -> bool:
  """Whether `variant` names a hybrid convolution-transformer student ("ConvB/16")."""
  return variant.startswith(CONV_PREFIX)


def decode_conv_variant(variant: str) -> ConvSize:
  """'ConvB/16' -> ConvSize((256, 384, 768), (2, 2, 11), 12)."""
  name, sep, patch = variant[len(CONV_PREFIX):].partition("/")
  if not is_hybrid(variant) or not sep or name not in CONV_SIZES or patch != str(CONV_PATCH):
    raise ValueError(f"Bad hybrid variant {variant!r}: expected '{CONV_PREFIX}<size>/"
                     f"{CONV_PATCH}' with size in {list(CONV_SIZES)}, e.g. 'ConvB/16'.")
  return CONV_SIZES[name]


def decode_variant(variant: str) -> tuple[Size, int]:
  """'B/16' -> (Size(768, 12, 12, 3072), 16); a hybrid 'ConvB/16' -> (its transformer
  stage's Size(768, 11, 12, 3072), 16), the patch being the stem's total stride."""
  if is_hybrid(variant):
    return decode_conv_variant(variant).transformer, CONV_PATCH
  name, sep, patch = variant.partition("/")
  if not sep or name not in SIZES or not patch.isdigit():
    raise ValueError(f"Bad ViT variant {variant!r}: expected '<size>/<patch>' with size in "
                     f"{list(SIZES)}, e.g. 'B/16'.")
  return SIZES[name], int(patch)


def steps_from(config: Mapping[str, Any], prefix: str, *, steps_per_epoch: Optional[int] = None,
               total_steps: Optional[int] = None, batch_size: Optional[int] = None,
               default: Optional[int] = None) -> Optional[int]:
  """Turns `{prefix}_steps | _epochs | _examples | _percent` of a config into a step count.

  Exactly one of the four may be set (big_vision's convention). Percent is of `total_steps`.
  """
  keys = {u: f"{prefix}_{u}" for u in ("steps", "epochs", "examples", "percent")}
  given = {u: config.get(k) for u, k in keys.items() if config.get(k) is not None}
  if len(given) > 1:
    raise ValueError(f"Set only one of {sorted(keys[u] for u in given)}.")
  if not given:
    return default
  (unit, value), = given.items()
  if unit == "steps":
    return int(value)
  if unit == "epochs":
    if steps_per_epoch is None:
      raise ValueError(f"{keys['epochs']} needs the dataset size to convert epochs to steps.")
    return int(round(value * steps_per_epoch))
  if unit == "examples":
    if batch_size is None:
      raise ValueError(f"{keys['examples']} needs the batch size.")
    return int(round(value / batch_size))
  if total_steps is None:
    raise ValueError(f"{keys['percent']} needs the total number of steps.")
  return int(round(value * total_steps))


def should_run(step: int, every: Optional[int], total_steps: int) -> bool:
  """The one predicate for periodic work: every `every` steps and at the last step."""
  if not every:
    return False
  return step % every == 0 or step == total_steps


def parse_arg(arg: Optional[str], **defaults: Any) -> ml_collections.ConfigDict:
  """Parses 'variant=B/16,runlocal=True' into a ConfigDict typed by the defaults."""
  out = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"Unknown config argument {key!r}; known: {sorted(defaults)}.")
    if not sep:
      value = "True"
    kind = type(defaults[key])
    if kind is bool:
      out[key] = value.lower() in ("1", "true", "yes")
    elif defaults[key] is None:
      out[key] = value
    else:
      out[key] = kind(value)
  return ml_collections.ConfigDict(out)


def teacher_specs(spec: Any) -> tuple[str, ...]:
  """`teacher.spec` as a tuple of specs: () for None or "", (spec,) for one, several for a
  comma-separated string ("clip_b16,dino_b16": the form the str-typed config field and
  `--config.teacher.spec=` take) or a list / tuple. A string naming an existing directory is one
  spec, commas or not. ValueError for an empty entry ("clip_b16,,dino_b16")."""
  if not spec:
    return ()
  if isinstance(spec, str):
    items = [spec] if os.path.isdir(spec) else spec.split(",")
  else:
    items = list(spec)
  specs = tuple(str(s).strip() for s in items)
  if not all(specs):
    raise ValueError(f"teacher.spec {spec!r} has an empty entry: separate the specs by single "
                     f"commas, e.g. 'clip_b16,dino_b16'.")
  return specs


def closest_key(config: ml_collections.ConfigDict, dotted: str) -> Optional[str]:
  """The valid dotted key closest to a misspelt one, for error messages."""
  keys = list(flat_keys(config))
  match = difflib.get_close_matches(dotted, keys, n=1, cutoff=0.5)
  return match[0] if match else None


def flat_keys(config: Any, prefix: str = ""):
  for key, value in config.items():
    path = f"{prefix}{key}"
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      yield from flat_keys(value, path + ".")
    else:
      yield path


# ---- keys renamed since a run was written (mim_jax.saved_config reads old runs with it) ----
# Old dotted key (or block) -> its new name, oldest first. Empty until a key is renamed.
RENAMED: dict[str, str] = {}
# Keys that the configs of some methods lost because their runs never read them (no teacher, no
# masks, a classifier's top-1 instead of kNN, another optimizer's settings; `defaults.base`): an
# old config.json holding one where today's config lacks it is read without it, since it changed
# nothing in that run (`mim_jax.saved_config`).
DROPPED = ("teacher.dtype", "teacher.resize_to_student", "teacher.attention_from", "mask.ratio",
           "eval.knn_k", "eval.knn_temperature", "optim.b1", "optim.b2", "optim.eps",
           "optim.momentum", "runlocal")


def new_name(key: str, renamed: Mapping[str, str] = RENAMED) -> Optional[str]:
  """The name a renamed dotted key has now (following chains of renames), else None."""
  seen = key
  for old, new in renamed.items():
    if seen == old or seen.startswith(old + "."):
      seen = new + seen[len(old):]
  return seen if seen != key else None


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{"a": {"b": 1}} -> {"a.b": 1} (nested mappings only; a list is a value)."""
  out: dict[str, Any] = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for key, value in flat.items():
    *parents, leaf = key.split(".")
    node = out
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return out


def upgrade(saved: Mapping[str, Any], renamed: Mapping[str, str] = RENAMED) -> dict[str, Any]:
  """`saved` (a config as nested dicts) with its renamed keys under their new names; ValueError
  when a config holds both a key's old and new name (it was not written by one version)."""
  flat = flatten(saved)
  out: dict[str, Any] = {}
  for key, value in flat.items():
    new = new_name(key, renamed)
    if new is not None and new in flat:
      raise ValueError(f"the saved config holds both {key} and its new name {new}; remove one.")
    out[new or key] = value
  return unflatten(out)
