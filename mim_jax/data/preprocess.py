"""Image preprocessing ops (TensorFlow, run inside tf.data on the host).

Every random op is a stateless TF op driven by an explicit `seed` of shape [2] int64, so the same
(seed, example) always gives the same pixels: the input pipeline derives one seed per example from
(run seed, host, stream position), which is what makes a resumed run see the very same crops.

Ops:
  decode(encoded)                       string [] -> uint8 [H, W, 3]
  train_op(size, ...)(image, seed)      uint8 [H, W, 3], int64 [2] -> float32 [size, size, 3]
  eval_op(size, crop_pct)(image)        uint8 [H, W, 3] -> float32 [size, size, 3]

Outputs are normalised with the ImageNet mean/std (the statistics the CLIP/DINO teachers and the
MIM papers use), on pixels scaled to [0, 1].
"""
from __future__ import annotations

from typing import Callable, Optional

import tensorflow as tf

from mim_jax.data import normalization
from mim_jax.data import randaugment as augment_lib

# ITU-R 601 luma weights: torchvision's rgb_to_grayscale, used by its ColorJitter.
_LUMA = (0.299, 0.587, 0.114)

TrainOp = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
EvalOp = Callable[[tf.Tensor], tf.Tensor]


def decode(encoded: tf.Tensor) -> tf.Tensor:
  """Decodes a PNG/JPEG/GIF/BMP string [] to uint8 [H, W, 3] (grey is expanded to RGB).

  Raises InvalidArgumentError at runtime on undecodable bytes: the pipeline puts this op alone in
  a map followed by `ignore_errors()`, so such records are dropped (and counted), nothing else.
  """
  image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def normalize(image: tf.Tensor) -> tf.Tensor:
  """[H, W, 3] pixels in [0, 1] -> float32 (x - mean) / std."""
  return (image - tf.constant(normalization.STUDENT_MEAN)) / tf.constant(normalization.STUDENT_STD)


def _resize(image: tf.Tensor, hw: tf.Tensor) -> tf.Tensor:
  """uint8 or float [h, w, 3] -> float32 [hw[0], hw[1], 3] in [0, 1], bicubic, antialiased.

  Bicubic overshoots; clipping keeps the normalised range what the model was promised.
  """
  image = tf.image.convert_image_dtype(image, tf.float32)
  image = tf.image.resize(image, hw, method="bicubic", antialias=True)
  return tf.clip_by_value(image, 0.0, 1.0)


def random_resized_crop(image: tf.Tensor, seed: tf.Tensor, size: int,
                        scale: tuple[float, float] = (0.2, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tf.Tensor:
  """uint8 [H, W, 3] -> float32 [size, size, 3] in [0, 1]: Inception-style crop, bicubic resize.

  A crop of area in `scale` (fraction of the image) and aspect in `ratio` is drawn with up to 10
  attempts; if none fits, the whole image is used (torchvision falls back to a centre crop of
  clamped aspect instead: rare, and equivalent for square images).
  """
  begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.shape(image), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
      min_object_covered=0.0, aspect_ratio_range=ratio, area_range=scale, max_attempts=10,
      use_image_if_no_bounding_boxes=True)
  crop = tf.slice(image, begin, crop_size)
  return _resize(crop, tf.constant([size, size]))


def _blend(image: tf.Tensor, other: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """factor * image + (1 - factor) * other, clipped to [0, 1] (torchvision's _blend)."""
  return tf.clip_by_value(factor * image + (1.0 - factor) * other, 0.0, 1.0)


def _grey(image: tf.Tensor) -> tf.Tensor:
  """[H, W, 3] -> [H, W, 1] luma."""
  return tf.reduce_sum(image * tf.constant(_LUMA), axis=-1, keepdims=True)


def color_jitter(image: tf.Tensor, seed: tf.Tensor, strength: float) -> tf.Tensor:
  """Brightness, contrast, saturation jitter of float [H, W, 3] in [0, 1], as torchvision does.

  Each factor is drawn from U(max(0, 1 - strength), 1 + strength): brightness scales the pixels,
  contrast blends with the mean grey level, saturation blends with the grey image. The order is
  fixed (torchvision permutes it at random; with equal strengths the difference is small). No hue.
  """
  lo, hi = max(0.0, 1.0 - strength), 1.0 + strength
  factors = tf.random.stateless_uniform([3], seed=seed, minval=lo, maxval=hi)
  image = tf.clip_by_value(image * factors[0], 0.0, 1.0)
  image = _blend(image, tf.reduce_mean(_grey(image)), factors[1])
  return _blend(image, _grey(image), factors[2])


def train_op(size: int, *, scale: tuple[float, float] = (0.2, 1.0),
             ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: bool = True,
             jitter: float = 0.0, randaugment: Optional[str] = None,
             random_erasing: float = 0.0) -> TrainOp:
  """Training augmentation: (uint8 [H, W, 3], seed int64 [2]) -> float32 [size, size, 3].

  RandomResizedCrop(size, scale, ratio, bicubic) -> optional horizontal flip (off for digits,
  whose mirror images are not digits) -> optional colour jitter -> optional RandAugment (timm's
  spec string, e.g. "rand-m9-mstd0.5-inc1") -> ImageNet normalisation -> optional random erasing
  with probability `random_erasing` (pixel mode); the last two as `randaugment.py` describes.
  """
  rand_aug = augment_lib.rand_augment(augment_lib.parse(randaugment)) if randaugment else None
  erase = augment_lib.random_erasing(random_erasing) if random_erasing > 0 else None

  def op(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    crop_seed, flip_seed, jitter_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=3))
    # Seeds of the fine-tuning ops from their own fold: the pretraining streams stay as they were.
    ra_seed, erase_seed = tf.unstack(tf.random.experimental.stateless_split(
        tf.random.experimental.stateless_fold_in(seed, 1), num=2))
    image = random_resized_crop(image, crop_seed, size, scale, ratio)
    if flip:
      image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    if jitter > 0:
      image = color_jitter(image, jitter_seed, jitter)
    if rand_aug is not None:
      image, _ = rand_aug(image, ra_seed)
    image = normalize(image)
    if erase is not None:
      image, _ = erase(image, erase_seed)
    return image

  return op


def eval_op(size: int, *, crop_pct: float = normalization.CROP_PCT) -> EvalOp:
  """Evaluation view: uint8 [H, W, 3] -> float32 [size, size, 3].

  Resizes the shorter side to round(size / crop_pct) (bicubic), takes the central size x size
  crop, normalises. crop_pct=1 resizes the shorter side to `size` exactly.
  """
  if not 0.0 < crop_pct <= 1.0:
    raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
  resize_to = normalization.eval_resize(size, crop_pct)

  def op(image: tf.Tensor) -> tf.Tensor:
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = resize_to / tf.reduce_min(hw)
    # The shorter side gets exactly `resize_to`; rounding the longer one can't go below it.
    new_hw = tf.maximum(tf.cast(tf.round(hw * scale), tf.int32), resize_to)
    image = _resize(image, new_hw)
    top = (new_hw[0] - size) // 2
    left = (new_hw[1] - size) // 2
    image = tf.slice(image, [top, left, 0], [size, size, 3])
    image.set_shape([size, size, 3])
    return normalize(image)

  return op
