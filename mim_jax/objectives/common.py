"""Pieces shared by the objectives: the student from a config, the teachers' dtypes, target
norms, regression losses, the default `prepare_state`."""
from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
import ml_collections

from mim_jax import config as config_lib
from mim_jax.models import layers, platforms
from mim_jax.models.convvit import ConvViT
from mim_jax.models.vit import ViT


PRECISIONS = platforms.PRECISIONS  # config.precision: "auto" | "float32" | "bfloat16"
DTYPES = platforms.DTYPES  # teacher.dtype: "float32" | "bfloat16"
TARGET_NORMS = ("ln", "bn", "l2", "none")  # normalize_target
LOSSES = ("smooth_l1", "l2", "mse", "l1", "cosine")  # regression_loss


def compute_dtype(config: ml_collections.ConfigDict):
  """The matmul input dtype: 'float32' or 'bfloat16' (parameters stay float32).

  `precision` "auto" is resolved for the target by `platforms.for_target` when a run is
  assembled or compiled ahead of time; a config that reaches here unresolved (a benchmark, the
  analysis CLI, a test) runs where it is: JAX's default backend.
  """
  return jnp.dtype(platforms.resolve_precision(config.get("precision", "float32")))


STREAM_DTYPES = ("auto",) + DTYPES  # student.stream_dtype


def student_stream_dtype(config: ml_collections.ConfigDict):
  """The student's (and its pixel decoder's) residual stream and activations between ops
  (`models/layers.py`): `student.stream_dtype`, where "auto" follows the matmuls
  (`compute_dtype`): bfloat16 on a TPU or GPU, float32 on CPU. A hybrid ConvViT's own blocks
  stay float32 whatever it says (`_check_hybrid_options` refuses "bfloat16" for them)."""
  name = config.student.get("stream_dtype", "auto")
  if name not in STREAM_DTYPES:
    raise ValueError(f"student.stream_dtype must be one of {STREAM_DTYPES}, got {name!r}.")
  return compute_dtype(config) if name == "auto" else jnp.dtype(name)


def teacher_dtype(config: ml_collections.ConfigDict, index: int = 0) -> str:
  """The matmul (and weight storage) dtype of teacher `index`: `teacher.dtype` (one name for
  every teacher, or one per teacher separated by commas), else `precision`'s."""
  raw = config.teacher.get("dtype")
  names = [n.strip() for n in raw.split(",")] if raw else [compute_dtype(config).name]
  n = max(len(config_lib.teacher_specs(config.teacher.get("spec"))), 1)
  if len(names) not in (1, n):
    raise ValueError(f"teacher.dtype {raw!r} gives {len(names)} dtypes for {n} teachers: give "
                     f"one for all or one per teacher.")
  name = names[index if len(names) > 1 else 0]
  if name not in DTYPES:
    raise ValueError(f"teacher.dtype must be 'float32', 'bfloat16' or None (follow precision), "
                     f"got {name!r}.")
  return name


def check_unmasked(config: ml_collections.ConfigDict) -> None:
  """A method that never masks (`MASKS = False`) refuses a mask kind: masks it would make and
  drop are a switch that does nothing."""
  if config.mask.kind != "none":
    raise ValueError(f"method {config.method!r} sees every patch: set config.mask.kind='none', "
                     f"got {config.mask.kind!r}.")


def keep_state(setup: Any, state: Any) -> Any:
  """The `prepare_state` of an objective that measures nothing before its first step: the fresh
  (or init_from) state as it is."""
  del setup
  return state


def make_student(config: ml_collections.ConfigDict, **overrides) -> ViT | ConvViT:
  """The student every method builds from `config.student` (pretraining and fine-tuning alike),
  so that a fine-tune's student has the pretrained one's parameters. A hybrid variant
  ("ConvB/16") builds `ConvViT`, with `student.stage_skips` (its pretraining-only skips)."""
  s = config.student
  if config_lib.is_hybrid(s.variant):
    _check_hybrid_options(s)
    kwargs = dict(image_size=config.data.image_size, drop_path=s.drop_path, posemb=s.posemb,
                  stage_skips=bool(s.get("stage_skips", False)), remat=s.remat,
                  dtype=compute_dtype(config))
    kwargs.update(overrides)
    return ConvViT.from_variant(s.variant, **kwargs)
  if s.get("stage_skips"):
    raise ValueError(f"student.stage_skips=True needs a hybrid student (e.g. ConvB/16); "
                     f"{s.variant!r} is a ViT: set student.stage_skips=False.")
  kwargs = dict(image_size=config.data.image_size, drop_path=s.drop_path, posemb=s.posemb,
                rel_pos=s.rel_pos, layer_scale=s.layer_scale, weight_init=s.weight_init,
                remat=s.remat, scan=bool(s.get("scan", False)), dtype=compute_dtype(config),
                stream_dtype=student_stream_dtype(config),
                act=s.get("act", "gelu"), ln_eps=float(s.get("ln_eps", 1e-6)),
                pre_norm=bool(s.get("pre_norm", False)))
  kwargs.update(overrides)
  return ViT.from_variant(s.variant, **kwargs)


def _check_hybrid_options(s: ml_collections.ConfigDict) -> None:
  """The ViT-only student switches stay at their defaults for a hybrid student (which has no
  relative position bias, layer scale, BEiT init, scanned blocks or CLIP's activation, epsilon
  and pre-norm): none is ignored silently."""
  # Each switch with the values that mean "off" for a hybrid (the first is the default).
  offs = (("rel_pos", ("none",)), ("layer_scale", (None,)), ("weight_init", ("mae",)),
          ("scan", (False,)), ("act", ("gelu",)), ("ln_eps", (1e-6,)), ("pre_norm", (False,)),
          ("stream_dtype", ("auto", "float32")))
  set_ = {k: s.get(k) for k, off in offs if s.get(k, off[0]) not in off}
  if set_:
    raise ValueError(f"student.variant {s.variant!r} is a hybrid ConvViT, which has no "
                     f"{', '.join(f'{k}={v!r}' for k, v in set_.items())}: reset "
                     f"{', '.join('student.' + k for k in set_)}.")


def normalize_target(x: jax.Array, norm: str, eps: float = 1e-5) -> jax.Array:
  """Target normalisation over the last axis or the whole tensor.

  "ln": LayerNorm without affine per token; "bn": the whole tensor standardised by its global
  mean and variance (what MaskAlign's code calls bn); "l2": unit vectors; "none".
  """
  x = x.astype(jnp.float32)
  if norm == "ln":
    return layers.layer_norm(x, eps)
  if norm == "bn":
    return (x - x.mean()) * jax.lax.rsqrt(x.var() + eps)
  if norm == "l2":
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True), 1e-12))
  if norm == "none":
    return x
  raise ValueError(f"Unknown target norm {norm!r}: use one of {TARGET_NORMS}.")


def regression_loss(pred: jax.Array, target: jax.Array, kind: str, beta: float = 1.0
                    ) -> jax.Array:
  """Element-wise loss [..., D] (or per token [...] for "cosine").

  "smooth_l1": 0.5 d^2 / beta where |d| < beta, else |d| - 0.5 beta (torch's convention);
  "l2"/"mse": d^2; "l1": |d|; "cosine": 1 - cos(pred, target) per token.
  """
  chex.assert_equal_shape([pred, target])
  d = pred.astype(jnp.float32) - target
  if kind == "smooth_l1":
    a = jnp.abs(d)
    return jnp.where(a < beta, 0.5 * d * d / beta, a - 0.5 * beta)
  if kind in ("l2", "mse"):
    return d * d
  if kind == "l1":
    return jnp.abs(d)
  if kind == "cosine":
    unit = lambda v: v * jax.lax.rsqrt(jnp.maximum(jnp.sum(v * v, -1, keepdims=True), 1e-12))
    return 1.0 - jnp.sum(unit(pred.astype(jnp.float32)) * unit(target), -1)
  raise ValueError(f"Unknown loss {kind!r}: use one of {LOSSES}.")
