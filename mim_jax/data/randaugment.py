"""RandAugment and random erasing as stateless TF ops (the fine-tuning augmentation of MAE/BEiT).

Written here rather than taken from a library: the maintained tf.data implementations (Keras'
`RandAugment` layer, TF Model Garden's `augment.RandAugment`) draw from stateful generators, so a
resumed run would not see the same pixels (the pipeline's promise, see `preprocess`), and neither
has timm's magnitude noise (`mstd`) or its "increasing" op set, which the papers' recipe names.
The ops and their magnitude ranges follow timm's `rand_augment_transform` semantics (PIL ops on
uint8 pixels), computed on float [0, 1] images quantised where PIL quantises.

`rand-m9-mstd0.5-inc1` (the MAE / BEiT / MaskAlign fine-tune): two ops per image, drawn with
replacement from the 15 "increasing" ops, each applied with probability 0.5, at magnitude
N(9, 0.5) clipped to [0, 10] (out of 10), drawn per op.

Random erasing (timm's RandomErasing, mode "pixel", one box): with probability p, a box of area
U(0.02, 1/3) of the image and log-uniform aspect in (0.3, 1/0.3) (up to 10 tries to fit) is
filled with N(0, 1) noise per pixel and channel; applied after normalisation.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable

import tensorflow as tf

LEVEL_DENOM = 10.0
# timm's fill for geometric ops: the ImageNet mean colour, in [0, 1].
FILL = (124 / 255, 116 / 255, 104 / 255)


@dataclasses.dataclass(frozen=True)
class RandAugmentSpec:
  num_ops: int = 2
  magnitude: float = 9.0
  magnitude_std: float = 0.0
  magnitude_max: float = LEVEL_DENOM
  increasing: bool = False


def parse(spec: str) -> RandAugmentSpec:
  """timm's string form: 'rand-m9-mstd0.5-inc1' (keys m, n, mstd, mmax, inc)."""
  parts = spec.split("-")
  if parts[0] != "rand":
    raise ValueError(f"augment.randaugment {spec!r}: expected 'rand-m<magnitude>[-n<ops>]"
                     f"[-mstd<std>][-inc1]', e.g. 'rand-m9-mstd0.5-inc1'.")
  fields = {}
  for part in parts[1:]:
    m = re.fullmatch(r"(mstd|mmax|inc|m|n)([\d.]+)", part)
    if not m:
      raise ValueError(f"augment.randaugment {spec!r}: unknown part {part!r}; known: m, n, mstd,"
                       f" mmax, inc.")
    fields[m.group(1)] = float(m.group(2))
  return RandAugmentSpec(num_ops=int(fields.get("n", 2)), magnitude=fields.get("m", 9.0),
                         magnitude_std=fields.get("mstd", 0.0),
                         magnitude_max=fields.get("mmax", LEVEL_DENOM),
                         increasing=bool(fields.get("inc", 0)))


# ---- pixel ops on float [H, W, 3] in [0, 1] ---------------------------------------------------
def _levels(image):
  return tf.floor(image * 255.0 + 0.5)


def _grey(image):
  return tf.reduce_sum(image * tf.constant((0.299, 0.587, 0.114)), -1, keepdims=True)


def _blend(image, other, factor):
  return tf.clip_by_value(other + factor * (image - other), 0.0, 1.0)


def auto_contrast(image, _):
  lo = tf.reduce_min(image, axis=(0, 1), keepdims=True)
  hi = tf.reduce_max(image, axis=(0, 1), keepdims=True)
  return tf.where(hi > lo, (image - lo) / tf.maximum(hi - lo, 1e-6), image)


def _equalize_channel(levels):
  """PIL's ImageOps.equalize of one uint8 channel (given as float levels [H, W])."""
  flat = tf.cast(tf.reshape(levels, [-1]), tf.int32)
  hist = tf.math.bincount(flat, minlength=256, maxlength=256)
  nonzero = tf.boolean_mask(hist, hist > 0)
  step = (tf.reduce_sum(nonzero) - nonzero[-1]) // 255
  lut = tf.clip_by_value((tf.cumsum(hist, exclusive=True) + step // 2) // tf.maximum(step, 1),
                         0, 255)
  out = tf.cast(tf.gather(lut, flat), tf.float32)
  return tf.where(step > 0, tf.reshape(out, tf.shape(levels)), levels)


def equalize(image, _):
  levels = _levels(image)
  return tf.stack([_equalize_channel(levels[..., c]) for c in range(3)], -1) / 255.0


def invert(image, _):
  return 1.0 - image


def posterize(image, m):  # increasing: fewer bits kept as m grows
  bits = 4 - tf.cast(m / LEVEL_DENOM * 4.0, tf.int32)
  shift = tf.cast(8 - bits, tf.float32)
  return tf.floor(_levels(image) / 2.0 ** shift) * 2.0 ** shift / 255.0


def solarize(image, m):  # increasing: lower threshold as m grows
  thresh = 256.0 - tf.floor(m / LEVEL_DENOM * 256.0)
  return tf.where(_levels(image) >= thresh, 1.0 - image, image)


def solarize_add(image, m):
  add = tf.floor(m / LEVEL_DENOM * 110.0) / 255.0
  return tf.where(_levels(image) < 128.0, tf.minimum(image + add, 1.0), image)


def _signed_factor(m, sign):  # increasing enhance ops: 1 +- 0.9 m / 10
  return 1.0 + sign * m / LEVEL_DENOM * 0.9


def color(image, m, sign):
  return _blend(image, _grey(image), _signed_factor(m, sign))


def contrast(image, m, sign):
  return _blend(image, tf.reduce_mean(_grey(image)), _signed_factor(m, sign))


def brightness(image, m, sign):
  return _blend(image, tf.zeros_like(image), _signed_factor(m, sign))


def sharpness(image, m, sign):
  """Blend with PIL's SMOOTH filter ([[1,1,1],[1,5,1],[1,1,1]] / 13), borders untouched."""
  k = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
  kernel = tf.tile(k[:, :, None, None], [1, 1, 3, 1])
  smooth = tf.nn.depthwise_conv2d(image[None], kernel, [1, 1, 1, 1], "VALID")[0]
  degenerate = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
  inside = tf.pad(tf.ones_like(smooth), [[1, 1], [1, 1], [0, 0]])
  degenerate = inside * degenerate + (1.0 - inside) * image
  return _blend(image, degenerate, _signed_factor(m, sign))


def _affine(image, matrix):
  """PIL's `Image.transform(AFFINE, matrix)`: output pixel centre (x, y) (continuous coordinates,
  centres at +0.5) samples the input at (a x + b y + c, d x + e y + f), bilinear, filled with
  `FILL` outside."""
  a, b, c, d, e, f = [tf.cast(v, tf.float32) for v in matrix]
  # the same map on pixel indices (TF's convention): shift by the half-pixel both ways
  c, f = c + 0.5 * (a + b - 1.0), f + 0.5 * (d + e - 1.0)
  transform = tf.reshape(tf.stack([a, b, c, d, e, f, 0.0, 0.0]), [1, 8])
  fill = tf.constant(FILL)
  # a per-channel fill: transform (image - fill) with fill 0, then add it back
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=(image - fill)[None], transforms=transform, output_shape=tf.shape(image)[:2],
      fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")[0]
  return out + fill


def rotate(image, m, sign):
  """PIL's `rotate(angle)` (counter-clockwise about the image centre), angle = +-30 m / 10 deg."""
  theta = -sign * m / LEVEL_DENOM * 30.0 * math.pi / 180.0
  cx = tf.cast(tf.shape(image)[1], tf.float32) / 2
  cy = tf.cast(tf.shape(image)[0], tf.float32) / 2
  cos, sin = tf.cos(theta), tf.sin(theta)
  return _affine(image, (cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy))


def shear_x(image, m, sign):
  return _affine(image, (1.0, sign * m / LEVEL_DENOM * 0.3, 0.0, 0.0, 1.0, 0.0))


def shear_y(image, m, sign):
  return _affine(image, (1.0, 0.0, 0.0, sign * m / LEVEL_DENOM * 0.3, 1.0, 0.0))


def translate_x(image, m, sign):
  dx = sign * m / LEVEL_DENOM * 0.45 * tf.cast(tf.shape(image)[1], tf.float32)
  return _affine(image, (1.0, 0.0, dx, 0.0, 1.0, 0.0))


def translate_y(image, m, sign):
  dy = sign * m / LEVEL_DENOM * 0.45 * tf.cast(tf.shape(image)[0], tf.float32)
  return _affine(image, (1.0, 0.0, 0.0, 0.0, 1.0, dy))


# timm's _RAND_INCREASING_TRANSFORMS, in its order; the plain set differs only in using the
# decreasing Posterize / Solarize and the unsigned-increasing enhance ops, not offered here.
OPS: tuple[tuple[str, Callable], ...] = (
    ("AutoContrast", auto_contrast), ("Equalize", equalize), ("Invert", invert),
    ("Rotate", rotate), ("PosterizeIncreasing", posterize), ("SolarizeIncreasing", solarize),
    ("SolarizeAdd", solarize_add), ("ColorIncreasing", color), ("ContrastIncreasing", contrast),
    ("BrightnessIncreasing", brightness), ("SharpnessIncreasing", sharpness),
    ("ShearX", shear_x), ("ShearY", shear_y), ("TranslateXRel", translate_x),
    ("TranslateYRel", translate_y))
_SIGNED = {"Rotate", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
           "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"}
APPLY_PROB = 0.5


def _branch(name, fn):
  if name in _SIGNED:
    return lambda image, m, sign: fn(image, m, sign)
  return lambda image, m, sign: fn(image, m)


def rand_augment(spec: RandAugmentSpec):
  """(float [H, W, 3] in [0, 1], seed int64 [2]) -> (image, applied int32 [len(OPS)]): the
  augmented image and how many times each op was applied to it."""
  if not spec.increasing:
    raise ValueError("augment.randaugment: only timm's increasing op set ('-inc1') is built; "
                     "add '-inc1' to the spec.")
  branches = [_branch(name, fn) for name, fn in OPS]

  def op(image, seed):
    applied = tf.zeros([len(OPS)], tf.int32)
    for s in tf.unstack(tf.random.experimental.stateless_split(seed, spec.num_ops)):
      s_draw, s_index, s_mag = tf.unstack(tf.random.experimental.stateless_split(s, 3))
      draws = tf.random.stateless_uniform([2], s_draw)
      index = tf.random.stateless_uniform([], s_index, 0, len(OPS), tf.int32)
      noise = tf.random.stateless_normal([], s_mag)
      m = tf.clip_by_value(spec.magnitude + spec.magnitude_std * noise, 0.0, spec.magnitude_max)
      sign = tf.where(draws[1] < 0.5, -1.0, 1.0)
      run = draws[0] < APPLY_PROB
      out = tf.switch_case(index, [lambda b=b: b(image, m, sign) for b in branches])
      image = tf.where(run, tf.clip_by_value(out, 0.0, 1.0), image)
      applied += tf.one_hot(index, len(OPS), dtype=tf.int32) * tf.cast(run, tf.int32)
    return image, applied

  return op


def erase_box(shape, seed, area=(0.02, 1 / 3), log_ratio=(math.log(0.3), math.log(1 / 0.3)),
              attempts: int = 10):
  """(top, left, h, w) of timm's box for an image of `shape` [H, W, C]; h = w = 0 when no try
  fits."""
  hh, ww = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
  draws = tf.random.stateless_uniform([attempts, 4], seed)
  target = (area[0] + (area[1] - area[0]) * draws[:, 0]) * hh * ww
  ratio = tf.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * draws[:, 1])
  h = tf.cast(tf.round(tf.sqrt(target * ratio)), tf.int32)
  w = tf.cast(tf.round(tf.sqrt(target / ratio)), tf.int32)
  fits = (h < shape[0]) & (w < shape[1])
  first = tf.argmax(tf.cast(fits, tf.int32))
  ok = tf.reduce_any(fits)
  h, w = tf.where(ok, h[first], 0), tf.where(ok, w[first], 0)
  top = tf.cast(draws[first, 2] * tf.cast(shape[0] - h + 1, tf.float32), tf.int32)
  left = tf.cast(draws[first, 3] * tf.cast(shape[1] - w + 1, tf.float32), tf.int32)
  return top, left, h, w


def random_erasing(prob: float):
  """(normalised float [H, W, C], seed int64 [2]) -> (image, erased bool [H, W])."""

  def op(image, seed):
    s_apply, s_box, s_noise = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    shape = tf.shape(image)
    top, left, h, w = erase_box(shape, s_box)
    rows, cols = tf.range(shape[0])[:, None], tf.range(shape[1])[None, :]
    box = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
    box = box & (tf.random.stateless_uniform([], s_apply) < prob)
    noise = tf.random.stateless_normal(shape, s_noise)
    return tf.where(box[..., None], noise, image), box

  return op
