"""The model's FLOPs per train step, counted from the config: the numerator of MFU.

Model FLOPs are the matrix multiplications the method needs, 2 per multiply-add, counted once:
the frozen teacher's forward (its input resize when it runs at another size, and only up to the
deepest block whose output is read), the student's forward and backward (a ViT, or the hybrid
ConvViT with its dense convolution stages), the heads and decoders. Recomputation for rematerialisation is not model
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
from mim_jax.objectives import maskalign


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
    """The matmuls on the images (their backward is the weight gradient alone)."""
    return patch_embed(self.patches, self.patch, self.width)

  def blocks(self, upto: Optional[int] = None) -> float:
    """Forward FLOPs of blocks [0, upto) (all by default)."""
    return sum(block(t, self.width, self.mlp) for t in self.tokens[:upto])


def depthwise(grid: int, channels: int, kernel: int) -> float:
  """A depthwise k x k convolution, SAME padding, on a grid x grid map: the taps that land on
  the map (padding does no work, and XLA does not count it)."""
  half = kernel // 2
  taps = sum(min(o + half, grid - 1) - max(o - half, 0) + 1 for o in range(grid))
  return 2.0 * channels * taps * taps


@dataclasses.dataclass(frozen=True)
class HybridEncoder:
  """ConvMAE's ConvViT (`mim_jax.models.convvit`): dense convolution stages at 1/4 and 1/8
  (every position, masked ones too), strided transitions to 1/16, then transformer blocks on
  the visible patch tokens only (no CLS), and the pretraining skips from stages 1 and 2."""
  widths: tuple[int, int, int]
  depths: tuple[int, int, int]
  mlp_ratio: int
  grid: int  # of the 1/16 tokens
  visible: int  # patch tokens the transformer sees
  skips: bool
  patch: int = config_lib.CONV_PATCH

  width = property(lambda self: self.widths[2])  # the transformer's
  depth = property(lambda self: self.depths[2])

  @property
  def patches(self) -> int:
    return self.grid * self.grid

  def embed(self) -> float:
    g1 = 4 * self.grid
    return patch_embed(g1 * g1, 4, self.widths[0])

  def blocks(self, upto: Optional[int] = None) -> float:
    del upto
    (w1, w2, w3), g = self.widths, self.grid
    out = 0.0
    for s, (width, grid) in enumerate(((w1, 4 * g), (w2, 2 * g))):
      p = grid * grid
      conv_block = (2 * dense(p, width, width) + depthwise(grid, width, 5)
                    + 2 * dense(p, width, self.mlp_ratio * width))
      out += self.depths[s] * conv_block
    out += dense(4 * g * g, 4 * w1, w2)  # stage 2's strided embedding (stride 2)
    out += dense(g * g, 4 * w2, w3) + dense(g * g, w3, w3)  # patch_embed3, patch_embed4
    if self.skips:
      out += dense(g * g, 16 * w1, w3) + dense(g * g, 4 * w2, w3)
    return out + self.depth * block(self.visible, w3, self.mlp_ratio * w3)


def student_encoder(config: ml_collections.ConfigDict, visible: Optional[int] = None,
                    mid: tuple[int, int] = (0, 0)) -> Encoder | HybridEncoder:
  """The student's encoder seeing `visible` patch tokens (all N by default); `mid` = (depth,
  extra tokens) for robust MAE's mid-level mask tokens."""
  s = config.student
  if config_lib.is_hybrid(s.variant):
    size = config_lib.decode_conv_variant(s.variant)
    grid = config.data.image_size // config_lib.CONV_PATCH
    return HybridEncoder(size.widths, size.depths, size.mlp_ratio, grid,
                         grid * grid if visible is None else visible,
                         bool(s.get("stage_skips", False)))
  size, patch = config_lib.decode_variant(s.variant)
  grid = config.data.image_size // patch
  n = grid * grid
  per_block = [1 + (n if visible is None else visible)] * size.depth
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
def resize(size_in: int, size_out: int, channels: int = 3) -> float:
  """The teacher's bicubic resize of square images (`convert.resize.resize_images`): one
  matmul per spatial axis."""
  if size_in == size_out:
    return 0.0
  return 2.0 * channels * (size_out * size_in * size_in + size_out * size_out * size_in)


def _teacher(flops: Flops, teacher: Any, upto: int, batch: int, image_size: int) -> None:
  enc = teacher_encoder(teacher)
  flops.add("teacher forward", batch * (resize(image_size, teacher.image_size) + enc.embed()
                                        + enc.blocks(upto)))


def _trained(flops: Flops, name: str, forward: float, batch: int,
             weight_only: float = 0.0) -> None:
  """A trained part: its forward, and a backward of twice that (`weight_only`: forward FLOPs
  whose backward needs the weight gradient alone)."""
  flops.add(f"{name} forward", batch * forward)
  flops.add("backward", batch * (2 * (forward - weight_only) + weight_only))


def _student(flops: Flops, enc: Encoder | HybridEncoder, batch: int, extra: float = 0.0) -> None:
  """Student encoder (+ `extra` trained FLOPs per image, heads) forward and backward; the patch
  embedding's input is the images, so its backward is the weight gradient only."""
  _trained(flops, "student", enc.embed() + enc.blocks() + extra, batch, weight_only=enc.embed())


def _decoder(config: ml_collections.ConfigDict, enc: Encoder | HybridEncoder,
             visible: int) -> float:
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
  method, obj, batch = config.method, config.objective, config.batch_size
  size = config.data.image_size
  flops = Flops()
  enc = student_encoder(config)
  n = enc.patches
  keep = _keep(config, n)
  teachers = _each_teacher(teacher)
  attentive = config.get("mask") and config.mask.get("kind") in ("attentive", "focused")
  if method == "maskalign":
    (t,) = teachers
    weights = maskalign.layer_weights(obj.layer_weights, t.depth, obj.top_k, obj.mid_layer)
    used = [j for j, w in enumerate(weights) if w > 0]
    _teacher(flops, t, t.depth if attentive else max(used) + 1, batch, size)
    enc = student_encoder(config, visible=keep)
    tokens, s = 1 + keep, enc.depth
    per_layer = (2.0 * s * tokens * enc.width if obj.alignment == "dynamic" else 0.0)
    adaptor = (dense(tokens, enc.width, t.width) if obj.adaptor == "linear"
               else dense(tokens, enc.width, enc.width) + dense(tokens, enc.width, t.width))
    _student(flops, enc, batch, extra=len(used) * (per_layer + adaptor))
  elif method in ("maskdistill", "fd"):
    (t,) = teachers
    _teacher(flops, t, t.depth, batch, size)
    _student(flops, enc, batch, extra=dense(1 + n, enc.width, t.width))
  elif method == "mrmae":
    for t in teachers:
      _teacher(flops, t, t.depth, batch, size)
    enc = student_encoder(config, visible=keep)
    heads = sum(dense(1 + keep, enc.width, t.width) for t in teachers)
    _student(flops, enc, batch, extra=heads + _decoder(config, enc, 1 + keep))
  elif method == "mae":
    m = int(n * obj.get("mid_mask_ratio", 0.0))  # robust MAE's mid-level mask tokens
    enc = student_encoder(config, visible=keep, mid=(obj.get("mid_mask_depth", 0), m))
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
