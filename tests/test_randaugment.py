"""RandAugment and random erasing (mim_jax/data/randaugment.py): the ops against PIL, and the
statistics of what is applied against the configuration."""
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from configs import finetune
from mim_jax import validate
from mim_jax.data import preprocess, randaugment as ra

FILL = (124, 116, 104)


@pytest.fixture(scope="module")
def image():
  rng = np.random.default_rng(0)
  return (rng.random((20, 24, 3)) ** 2 * 200 + 20).astype(np.uint8)


def levels(x):
  return np.round(np.asarray(x) * 255)


def test_pixel_ops_equal_pil(image):
  x, pil, m = tf.constant(image / 255.0, tf.float32), Image.fromarray(image), tf.constant(9.0)
  exact = [(ra.equalize(x, m), ImageOps.equalize(pil)), (ra.invert(x, m), ImageOps.invert(pil)),
           (ra.posterize(x, m), ImageOps.posterize(pil, 4 - int(0.9 * 4))),
           (ra.solarize(x, m), ImageOps.solarize(pil, 256 - int(0.9 * 256)))]
  for ours, ref in exact:
    np.testing.assert_array_equal(levels(ours), np.asarray(ref))
  close = [(ra.auto_contrast(x, m), ImageOps.autocontrast(pil))]
  for fn, enhance in ((ra.color, ImageEnhance.Color), (ra.contrast, ImageEnhance.Contrast),
                      (ra.brightness, ImageEnhance.Brightness),
                      (ra.sharpness, ImageEnhance.Sharpness)):
    for sign in (-1.0, 1.0):
      close.append((fn(x, m, sign), enhance(pil).enhance(1 + sign * 0.9 * 0.9)))
  for ours, ref in close:  # PIL rounds its intermediate uint8 images
    assert np.abs(levels(ours) - np.asarray(ref, np.float64)).max() <= 1


def test_geometric_ops_match_pil_inside_the_image(image):
  x, pil, m = tf.constant(image / 255.0, tf.float32), Image.fromarray(image), tf.constant(9.0)
  affine = lambda mat: pil.transform(pil.size, Image.AFFINE, mat, resample=Image.BILINEAR,
                                     fillcolor=FILL)
  cases = [(ra.rotate(x, m, 1.0), pil.rotate(27, resample=Image.BILINEAR, fillcolor=FILL)),
           (ra.rotate(x, m, -1.0), pil.rotate(-27, resample=Image.BILINEAR, fillcolor=FILL)),
           (ra.shear_x(x, m, 1.0), affine((1, 0.27, 0, 0, 1, 0))),
           (ra.shear_y(x, m, -1.0), affine((1, 0, 0, -0.27, 1, 0))),
           (ra.translate_x(x, m, 1.0), affine((1, 0, 0.405 * 24, 0, 1, 0))),
           (ra.translate_y(x, m, -1.0), affine((1, 0, 0, 0, 1, -0.405 * 20)))]
  for ours, ref in cases:
    diff = np.abs(levels(ours) - np.asarray(ref, np.float64))
    # PIL and TF treat the last half pixel before the fill differently: only edges differ
    assert diff.mean() < 2 and (diff > 2).mean() < 0.08, (diff.mean(), (diff > 2).mean())


def test_spec_parsing_and_bad_specs():
  spec = ra.parse("rand-m9-mstd0.5-inc1")
  assert spec == ra.RandAugmentSpec(num_ops=2, magnitude=9.0, magnitude_std=0.5, increasing=True)
  with pytest.raises(ValueError, match="unknown part 'x3'"):
    ra.parse("rand-m9-x3")
  c = finetune.get_config("runlocal=True")
  c.augment.randaugment = "auto-m9"
  with pytest.raises(ValueError, match="expected 'rand-m"):
    validate.check(c, "/tmp/never_written")
  c = finetune.get_config("runlocal=True")
  c.augment.random_erasing = 1.5
  with pytest.raises(ValueError, match="a probability"):
    validate.check(c, "/tmp/never_written")


def over_seeds(op, image, n):
  seeds = tf.data.Dataset.range(n).map(
      lambda i: tf.random.experimental.stateless_fold_in(tf.constant([3, 4], tf.int64), i))
  return list(seeds.map(lambda s: op(image, s)).batch(n).as_numpy_iterator())[0]


def test_randaugment_applies_two_ops_each_half_the_time(image):
  n = 600
  _, applied = over_seeds(ra.rand_augment(ra.parse("rand-m9-mstd0.5-inc1")),
                          tf.constant(image / 255.0, tf.float32), n)
  per_image = applied.sum(1)
  assert per_image.max() <= 2
  assert per_image.mean() == pytest.approx(1.0, abs=0.1)  # 2 ops x p 0.5; sd of the mean 0.03
  per_op = applied.sum(0)  # each op ~ 2 * 0.5 * n / 15 = 40 times
  assert len(per_op) == 15 and per_op.min() >= 15 and per_op.max() <= 70, per_op


def test_random_erasing_area_and_rate_match_timm():
  n, p = 1000, 0.25
  image = tf.zeros([32, 32, 3])
  erased_images, boxes = over_seeds(ra.random_erasing(p), image, n)
  area = boxes.reshape(n, -1).mean(1)
  hit = area > 0
  assert hit.mean() == pytest.approx(p, abs=0.04)  # sd 0.014
  # box area U(0.02, 1/3) of the image (rounded to pixels): mean 0.177
  assert area[hit].min() >= 0.015 and area[hit].max() <= 0.36
  assert area[hit].mean() == pytest.approx((0.02 + 1 / 3) / 2, abs=0.025)
  noise = erased_images[boxes]
  assert noise.std() == pytest.approx(1.0, abs=0.05) and abs(noise.mean()) < 0.05
  assert not erased_images[~boxes].any()  # nothing outside the box changed


def test_train_op_is_deterministic_per_seed_and_keeps_the_pretraining_stream(image):
  seed = tf.constant([1, 2], tf.int64)
  plain = preprocess.train_op(16)(tf.constant(image), seed)
  full = preprocess.train_op(16, randaugment="rand-m9-mstd0.5-inc1", random_erasing=1.0)
  a, b = full(tf.constant(image), seed), full(tf.constant(image), seed)
  np.testing.assert_array_equal(a, b)
  assert np.abs(np.asarray(a) - np.asarray(plain)).max() > 0.1
  # without the fine-tuning ops, the same crop and flip as before they existed
  np.testing.assert_array_equal(preprocess.train_op(16, random_erasing=0.0)(tf.constant(image),
                                                                            seed), plain)
