"""Tests of the data package: the digits builder, preprocessing ops and the per-host pipelines."""
import functools

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from jax.sharding import Mesh

from mim_jax.data import block_mask
from mim_jax.data import digits
from mim_jax.data import input_pipeline as ip
from mim_jax.data import normalization
from mim_jax.data import preprocess

SIZE = 16  # Model input side in these tests: small keeps tf.data fast.


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
  path = str(tmp_path_factory.mktemp("tfds"))
  digits.ensure_built(path)
  return path


@pytest.fixture(scope="module")
def mesh() -> Mesh:
  return Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "fsdp"))


def _config(data_dir, **overrides):
  config = ip.default_config()
  config.update(name="mim_digits", data_dir=data_dir, split="train", eval_split="test",
                image_size=SIZE, flip=False, shuffle_buffer=64)
  config.update(overrides)
  return config


def _mask_fn(rng: np.random.Generator, batch_size: int) -> np.ndarray:
  return (rng.random((batch_size, 4)) < 0.5).astype(np.uint8)


def _take(it, n):
  return [jax.tree.map(np.asarray, next(it)) for _ in range(n)]


def _assert_batches_equal(a, b):
  for x, y in zip(a, b, strict=True):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


# --------------------------------------------------------------------------------------------
# Digits builder.
# --------------------------------------------------------------------------------------------
def test_digits_builder(data_dir):
  builder = tfds.builder("mim_digits", data_dir=data_dir)  # Registered by the import, reused.
  assert builder.info.splits["train"].num_examples == 1497
  assert builder.info.splits["test"].num_examples == 300
  test = list(tfds.as_numpy(builder.as_dataset(split="test")))
  assert test[0]["image"].shape == (32, 32, 3) and test[0]["image"].dtype == np.uint8
  counts = np.bincount([ex["label"] for ex in test], minlength=10)
  assert counts.sum() == 300 and counts.min() >= 29  # Stratified: ~30 of each digit.
  image = test[0]["image"]
  assert image.min() < 64 and image.max() > 192  # Ink and paper, not a flat image.
  assert digits.ensure_built(data_dir).is_prepared()


def test_digits_splits_are_disjoint_and_complete():
  idx = digits.split_indices()
  assert len(np.union1d(idx["train"], idx["test"])) == 1797
  assert len(np.intersect1d(idx["train"], idx["test"])) == 0


# --------------------------------------------------------------------------------------------
# Preprocessing.
# --------------------------------------------------------------------------------------------
def test_train_op_is_a_function_of_the_seed():
  image = tf.cast(tf.random.stateless_uniform([40, 30, 3], [0, 0], 0, 256, tf.int32), tf.uint8)
  op = preprocess.train_op(SIZE, flip=True, jitter=0.4)
  a, b = op(image, tf.constant([1, 2], tf.int64)), op(image, tf.constant([1, 2], tf.int64))
  c = op(image, tf.constant([1, 3], tf.int64))
  assert a.shape == (SIZE, SIZE, 3) and a.dtype == tf.float32
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


def test_eval_op_centre_crop():
  # A 20x40 image whose left and right quarters are white: crop_pct=1 keeps the central square.
  image = np.zeros([20, 40, 3], np.uint8)
  image[:, :10] = image[:, 30:] = 255
  out = preprocess.eval_op(SIZE, crop_pct=1.0)(tf.constant(image)).numpy()
  assert out.shape == (SIZE, SIZE, 3)
  black = (0.0 - np.array(normalization.IMAGENET_MEAN)) / np.array(normalization.IMAGENET_STD)
  np.testing.assert_allclose(out[:, 2:-2], np.broadcast_to(black, out[:, 2:-2].shape), atol=1e-5)


# --------------------------------------------------------------------------------------------
# Pretraining pipeline.
# --------------------------------------------------------------------------------------------
def test_pretrain_batches_shapes_and_sharding(data_dir, mesh):
  block_masks = functools.partial(block_mask.block_masks, grid=(2, 2), ratio=0.5)
  it = ip.make_pretrain_iterator(_config(data_dir), global_batch_size=16, mesh=mesh, seed=0,
                                 mask_fn=block_masks)
  batch = next(it)
  assert batch["image"].shape == (16, SIZE, SIZE, 3) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (16,) and batch["label"].dtype == np.int32
  assert batch["mask"].shape == (16, 4) and batch["mask"].dtype == np.uint8
  np.testing.assert_array_equal(np.asarray(batch["mask"]).sum(1), 2)
  for x in batch.values():
    assert x.sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"))
    assert len(x.addressable_shards) == 8
    assert {s.data.shape[0] for s in x.addressable_shards} == {2}
  assert np.all((np.asarray(batch["label"]) >= 0) & (np.asarray(batch["label"]) < 10))
  assert it.num_skipped() == 0


def test_pretrain_is_deterministic_given_the_seed(data_dir, mesh):
  make = lambda seed: ip.make_pretrain_iterator(
      _config(data_dir, color_jitter=0.4, flip=True), global_batch_size=16, mesh=mesh,
      seed=seed, mask_fn=_mask_fn)
  a, b, c = _take(make(0), 2), _take(make(0), 2), _take(make(1), 2)
  _assert_batches_equal(a, b)
  assert not np.array_equal(a[0]["label"], c[0]["label"])
  assert not np.allclose(a[1]["image"], c[1]["image"])
  assert not np.array_equal(a[1]["mask"], c[1]["mask"])


@pytest.mark.parametrize("cache", [False, True])
def test_pretrain_resumes_exactly(data_dir, mesh, cache):
  # 40 records and 16 per step: steps 3..5 start mid-epoch and cross an epoch boundary.
  config = _config(data_dir, split="train[:40]", cache=cache)
  make = lambda start: ip.make_pretrain_iterator(config, global_batch_size=16, mesh=mesh,
                                                 seed=3, start_step=start, mask_fn=_mask_fn)
  fresh = _take(make(0), 6)
  _assert_batches_equal(fresh[3:], _take(make(3), 3))
  # Epochs 0 and 1 (stream positions 0..39, 40..79) order the same 40 examples differently.
  labels = np.concatenate([b["label"] for b in fresh])
  np.testing.assert_array_equal(np.sort(labels[:40]), np.sort(labels[40:80]))
  assert not np.array_equal(labels[:40], labels[40:80])


# --------------------------------------------------------------------------------------------
# Evaluation pipeline.
# --------------------------------------------------------------------------------------------
def test_eval_covers_every_example_once(data_dir, mesh):
  config = _config(data_dir, eval_split="test[:50]")
  it = ip.make_eval_iterator(config, global_batch_size=16, mesh=mesh)
  batches = list(it)
  assert len(batches) == len(it) == 4  # 50 examples -> 3 full batches + 2 + 14 padding.
  valid = np.concatenate([np.asarray(b["valid"]) for b in batches])
  labels = np.concatenate([np.asarray(b["label"]) for b in batches])
  images = np.concatenate([np.asarray(b["image"]) for b in batches])
  assert valid.sum() == 50 and valid[:50].all()
  assert (labels[~valid] == -1).all() and (images[~valid] == 0).all()
  builder = tfds.builder("mim_digits", data_dir=data_dir)
  expected = [ex["label"] for ex in tfds.as_numpy(builder.as_dataset(split="test[:50]"))]
  np.testing.assert_array_equal(labels[valid], expected)
  # Distinct examples: no image appears twice.
  assert len(np.unique(images[valid].reshape(50, -1), axis=0)) == 50
  _assert_batches_equal(batches, list(ip.make_eval_iterator(config, global_batch_size=16,
                                                            mesh=mesh)))


# --------------------------------------------------------------------------------------------
# Other sources: mocked ImageNet, corrupt images, missing datasets.
# --------------------------------------------------------------------------------------------
def test_mock_imagenet2012_end_to_end(mesh, tmp_path):
  config = _config(str(tmp_path), name="imagenet2012", eval_split="validation", flip=True,
                   color_jitter=0.4)
  with tfds.testing.mock_data(num_examples=12):
    batch = next(ip.make_pretrain_iterator(config, global_batch_size=8, mesh=mesh, seed=0))
    assert batch["image"].shape == (8, SIZE, SIZE, 3) and batch["label"].shape == (8,)
    assert np.isfinite(np.asarray(batch["image"])).all()
    evaluated = list(ip.make_eval_iterator(config, global_batch_size=8, mesh=mesh))
  assert sum(int(b["valid"].sum()) for b in evaluated) == 12


CORRUPT = (2, 5, 9)  # Record indices with undecodable bytes among 12.


def _source_with_corrupt_images(self, split, decoders=None, read_config=None, **kwargs):
  """A mock `_as_dataset`: 12 PNG-encoded records (label = index), 3 of them garbage."""
  del self, split, decoders, read_config, kwargs
  images = [b"not an image" if i in CORRUPT else
            tf.io.encode_png(tf.fill([8, 8, 3], tf.constant(i * 20, tf.uint8))).numpy()
            for i in range(12)]
  return tf.data.Dataset.from_tensor_slices({"image": images, "label": np.arange(12)})


def test_corrupt_images_are_skipped_and_counted(mesh, tmp_path):
  config = _config(str(tmp_path), name="imagenet2012", shuffle_buffer=1, eval_split="validation")
  with tfds.testing.mock_data(as_dataset_fn=_source_with_corrupt_images):
    it = ip.make_pretrain_iterator(config, global_batch_size=8, mesh=mesh, seed=0)
    first = np.asarray(next(it)["label"])
    np.testing.assert_array_equal(first, [0, 1, 3, 4, 6, 7, 8, 10])
    assert it.num_skipped() == 3  # Records 2, 5 and 9 were read before record 10.
    next(it)  # 11, then the second epoch: 0, 1, 3, 4, 6, 7, 8.
    assert it.num_skipped() == 5  # Plus 2 and 5 of the second epoch.

    config.cache = True  # Decoded once, before positions are counted: skipped up front.
    cached = ip.make_pretrain_iterator(config, global_batch_size=8, mesh=mesh, seed=0)
    assert cached.num_skipped() == 3
    np.testing.assert_array_equal(np.asarray(next(cached)["label"]), first)

    config.cache = False
    evaluated = ip.make_eval_iterator(config, global_batch_size=8, mesh=mesh)
    labels = np.concatenate([np.asarray(b["label"])[np.asarray(b["valid"])] for b in evaluated])
  np.testing.assert_array_equal(labels, [i for i in range(12) if i not in CORRUPT])
  assert evaluated.num_skipped() == 3


def test_missing_dataset_says_what_to_do(mesh, tmp_path):
  for name in ("imagenet2012", "no_such_dataset_xyz"):
    with pytest.raises(ip.DatasetNotFoundError) as err:
      ip.make_pretrain_iterator(_config(str(tmp_path), name=name), global_batch_size=8,
                                mesh=mesh, seed=0)
    message = str(err.value)
    assert "\n" not in message
    assert f"{name} not found in {tmp_path}" in message and "data_dir" in message
