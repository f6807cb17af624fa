"""The model's FLOPs per train step, counted from the config: the numerator of MFU.

Model FLOPs are the matrix multiplications the method needs, 2 per multiply-add, counted once:
the frozen teacher's forward (only up to the deepest block whose output is read), the student's
forward and backward, the heads and decoders. Recomputation for rematerialisation is not model
work and is not counted; elementwise work (norms, softmax, GELU, the optimizer) is not counted
either, by the usual MFU convention (it is a few percent of a ViT-B step's FLOPs and runs on the
vector unit, not the matrix unit the peak FLOP/s describe).

Backward: a matmul whose both operands depend on the parameters costs twice its forward (the
gradient of each operand); one whose other operand is data (the patch embedding of the images)
needs only its weight gradient, once its forward; frozen parts (the teacher, a linear probe's
encoder) have none.

`tests/test_model_flops.py` checks each method's count against the dot and convolution FLOPs of
the compiled, unscanned, remat-free step.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import ml_collections

from mim_jax import config as config_lib
from mim_jax import masking


@dataclasses.dataclass
class Flops:
  """Model FLOPs of one train step over the global batch, by part."""
  parts: dict[str, float] = dataclasses.field(default_factory=dict)

  def add(self, part: str, flops: float) -> None:
    self.parts[part] = self.parts.get(part, 0.0) + float(flops)

  @property
  def total(self) -> float:
    return sum(self.parts.values())


# --------------------------------------------------------------------------------------------
# Forward matmul FLOPs of the pieces, per image.
# --------------------------------------------------------------------------------------------
def dense(tokens: int, d_in: int, d_out: int) -> float:
  return 2.0 * tokens * d_in * d_out


def block(tokens: int, width: int, mlp: int) -> float:
  """One pre-LN transformer block on `tokens` tokens: qkv, scores, probs x values, output
  projection, the two MLP layers."""
  return (dense(tokens, width, 3 * width) + 2 * 2.0 * tokens * tokens * width
          + dense(tokens, width, width) + dense(tokens, width, mlp) + dense(tokens, mlp, width))


def patch_embed(patches: int, patch: int, width: int, channels: int = 3) -> float:
  return dense(patches, patch * patch * channels, width)


@dataclasses.dataclass(frozen=True)
class Encoder:
  """A ViT's sizes and the tokens its blocks see."""
  width: int
  depth: int
  mlp: int
  patch: int
  patches: int  # patches embedded (all of them: the embedding runs before any gather)
  tokens: tuple[int, ...]  # tokens seen by each block

  def embed(self) -> float:
    return patch_embed(self.patches, self.patch, self.width)

  def blocks(self, upto: Optional[int] = None) -> float:
    """Forward FLOPs of blocks [0, upto) (all by default)."""
    return sum(block(t, self.width, self.mlp) for t in self.tokens[:upto])


def student_encoder(config: ml_collections.ConfigDict, tokens: Optional[int] = None,
                    mid: tuple[int, int] = (0, 0)) -> Encoder:
  """The student's encoder; `tokens` per block (1 + visible by default all 1 + N), `mid` =
  (depth, extra tokens) for robust MAE's mid-level mask tokens."""
  size, patch = config_lib.decode_variant(config.student.variant)
  grid = config.data.image_size // patch
  n = grid * grid
  per_block = [tokens if tokens is not None else 1 + n] * size.depth
  for i in range(mid[0], size.depth) if mid[1] else ():
    per_block[i] += mid[1]
  return Encoder(size.width, size.depth, size.mlp_dim, patch, n, tuple(per_block))


def teacher_encoder(teacher: Any) -> Encoder:
  a = teacher.arch
  n = a.grid * a.grid
  return Encoder(a.width, a.depth, a.mlp_dim, a.patch, n, (1 + n,) * a.depth)


# --------------------------------------------------------------------------------------------
# Per method.
# --------------------------------------------------------------------------------------------
def _teacher(flops: Flops, teacher: Any, upto: int, batch: int) -> None:
  enc = teacher_encoder(teacher)
  flops.add("teacher forward", batch * (enc.embed() + enc.blocks(upto)))


def _trained(flops: Flops, name: str, forward: float, batch: int,
             weight_only: float = 0.0) -> None:
  """A trained part: its forward, and a backward of twice that (`weight_only`: forward FLOPs
  whose backward needs the weight gradient alone)."""
  flops.add(f"{name} forward", batch * forward)
  flops.add("backward", batch * (2 * (forward - weight_only) + weight_only))


def _student(flops: Flops, enc: Encoder, batch: int, extra: float = 0.0) -> None:
  """Student encoder (+ `extra` trained FLOPs per image, heads) forward and backward; the patch
  embedding's input is the images, so its backward is the weight gradient only."""
  _trained(flops, "student", enc.embed() + enc.blocks() + extra, batch, weight_only=enc.embed())


def _decoder(config: ml_collections.ConfigDict, enc: Encoder, visible: int) -> float:
  """MAE's pixel decoder on 1 + visible encoder tokens -> 1 + N tokens -> p*p*3 pixels."""
  d = config.objective.decoder
  n = enc.patches
  return (dense(visible, enc.width, d.width) + d.depth * block(1 + n, d.width, d.mlp_dim)
          + dense(1 + n, d.width, enc.patch * enc.patch * 3))


def _keep(config: ml_collections.ConfigDict, n: int) -> int:
  kind = config.mask.get("kind", "none") if config.get("mask") else "none"
  if kind in ("none", "block"):
    return n
  return masking.num_keep(n, config.mask.ratio)


def _each_teacher(teacher: Any) -> tuple[Any, ...]:
  if teacher is None:
    return ()
  return teacher if isinstance(teacher, tuple) else (teacher,)


def count(config: ml_collections.ConfigDict, teacher: Any = None) -> Flops:
  """Model FLOPs of one train step of `config` over its global batch (`config.batch_size`);
  `teacher`: the step's teacher(s) (`Setup.teacher`), with the grid they run at."""
  if config_lib.is_hybrid(config.student.variant):
    raise NotImplementedError("model FLOPs of the hybrid ConvViT student are not counted yet.")
  method, obj, batch = config.method, config.objective, config.batch_size
  flops = Flops()
  enc = student_encoder(config)
  n = enc.patches
  keep = _keep(config, n)
  teachers = _each_teacher(teacher)
  attentive = config.get("mask") and config.mask.get("kind") in ("attentive", "focused")
  if method == "maskalign":
    from mim_jax.objectives import maskalign  # pylint: disable=import-outside-toplevel
    (t,) = teachers
    weights = maskalign.layer_weights(obj.layer_weights, t.depth, obj.top_k, obj.mid_layer)
    used = [j for j, w in enumerate(weights) if w > 0]
    _teacher(flops, t, t.depth if attentive else max(used) + 1, batch)
    enc = student_encoder(config, tokens=1 + keep)
    tokens, s = 1 + keep, enc.depth
    per_layer = (2.0 * s * tokens * enc.width if obj.alignment == "dynamic" else 0.0)
    adaptor = (dense(tokens, enc.width, t.width) if obj.adaptor == "linear"
               else dense(tokens, enc.width, enc.width) + dense(tokens, enc.width, t.width))
    _student(flops, enc, batch, extra=len(used) * (per_layer + adaptor))
  elif method in ("maskdistill", "fd"):
    (t,) = teachers
    _teacher(flops, t, t.depth, batch)
    _student(flops, enc, batch, extra=dense(1 + n, enc.width, t.width))
  elif method == "mrmae":
    for t in teachers:
      _teacher(flops, t, t.depth, batch)
    enc = student_encoder(config, tokens=1 + keep)
    heads = sum(dense(1 + keep, enc.width, t.width) for t in teachers)
    _student(flops, enc, batch, extra=heads + _decoder(config, enc, 1 + keep))
  elif method == "mae":
    m = int(n * obj.get("mid_mask_ratio", 0.0))  # robust MAE's mid-level mask tokens
    enc = student_encoder(config, tokens=1 + keep, mid=(obj.get("mid_mask_depth", 0), m))
    _student(flops, enc, batch, extra=_decoder(config, enc, 1 + keep + m))
  elif method == "classify":
    _student(flops, enc, batch, extra=dense(1, enc.width, obj.num_classes))
  elif method == "linear_probe":
    flops.add("student forward", batch * (enc.embed() + enc.blocks()))
    _trained(flops, "head", dense(1, enc.width, obj.num_classes), batch,
             weight_only=dense(1, enc.width, obj.num_classes))
  else:
    raise NotImplementedError(f"no model FLOP count for method {method!r}.")
  return flops
