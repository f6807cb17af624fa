"""Per-host tf.data pipelines that yield global batches sharded over the mesh's batch axes.

Each host reads its own slice of a TFDS split (`tfds.even_splits(split, n=process_count)`),
preprocesses and batches `global_batch_size // process_count` examples with `drop_remainder`,
and the per-host numpy batches become global `jax.Array`s with
`jax.make_array_from_process_local_data` under `NamedSharding(mesh, P(("data", "fsdp")))`: the
batch dimension is split over the mesh axes "data" and "fsdp" (those present), and replicated over
"model".

Public API:
  make_pretrain_iterator(config_data, *, global_batch_size, mesh, seed, start_step=0,
                         mask_fn=None) -> Pipeline   (infinite)
      {"image": f32 [B, H, W, 3], "label": i32 [B]} (+ "mask": u8 [B, N] when mask_fn is given)
  make_eval_iterator(config_data, *, global_batch_size, mesh, split=None) -> Pipeline
      (one pass, len() batches) {"image": f32 [B, H, W, 3], "label": i32 [B], "valid": bool [B]}
  Pipeline.num_skipped() -> int   corrupt images this host has dropped so far
  default_config() -> ConfigDict  every field below with its default

Config fields (`config.data`):
  name            TFDS name: "imagenet2012", "mim_digits" (built locally on first use, see
                  `digits.py`), or any other TFDS dataset with an "image" (and "label") feature.
  data_dir        TFDS data dir; None: $TFDS_DATA_DIR, else ~/tensorflow_datasets.
  split           pretraining split, e.g. "train" or "train[:90%]".
  eval_split      split of `make_eval_iterator` (kNN / linear-probe features), e.g. "validation".
  image_size      side of the square crops fed to the model.
  crop_scale      (min, max) area fraction of RandomResizedCrop; aspect in (3/4, 4/3).
  crop_pct        eval: shorter side resized to image_size / crop_pct, then centre-cropped.
  flip            random horizontal flips in pretraining (off for digits).
  color_jitter    brightness/contrast/saturation strength (0: off; MaskDistill uses 0.4).
  shuffle_buffer  examples in the shuffle buffer of each host.
  cache           decode the host's split once and keep it in memory (small datasets only).

Determinism and exact resume. The record stream of a host is a function of (seed, host, position):
epoch e is the host's split shuffled by a buffer seeded with hash(seed, e); the example at stream
position p is augmented with the stateless seed fold_in((seed, host), p); the mask of step s is
drawn from numpy's default_rng((seed, s, host)). A run started at `start_step` begins at position
start_step * local_batch: whole epochs are skipped for free, and the records of the partial epoch
are read and dropped *before decoding* (cost: reading at most one epoch of encoded records per host,
decoding none), so its batches are exactly those a run that never stopped would have seen.
Without `cache`, positions count records, corrupt ones included, so step * local_batch is not
where a step's batch begins once a corrupt record was dropped: the train loop stores every host's
`Pipeline.position()` (records read, corrupt ones skipped) in each checkpoint and resumes from it
(`position=`), exactly. With `cache=True` corrupt images are dropped before positions are
assigned, and step * local_batch is exact by itself.

Corrupt images. Decoding sits alone in a `map` followed by `ignore_errors()`, so an undecodable
image drops its record and nothing else. Every batch carries the stream positions of its rows
(stripped before it is yielded); records consumed minus examples kept is the skipped count, read on
the host without any Python callback in the graph: `pipeline.num_skipped()`. It is per host: the
train loop logs it each log step (summed over hosts if it wants a global figure). With `cache` each
corrupt record is counted once, when the cache is filled.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterator, Optional

import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from mim_jax import allowed
from mim_jax.data import digits
from mim_jax.data import normalization
from mim_jax.data import preprocess
from mim_jax.data import randaugment

BATCH_AXES = ("data", "fsdp")
_AUTOTUNE = tf.data.AUTOTUNE
_FOREVER = 2**62  # Epoch range of the infinite stream.
_POS = "_pos"  # Stream position of a row; host-side bookkeeping, never yielded.

MaskFn = Callable[[np.random.Generator, int], np.ndarray]
Batch = dict[str, jax.Array]


class DatasetNotFoundError(FileNotFoundError):
  """A dataset that is neither registered with TFDS nor built in the data dir."""


def default_config() -> ml_collections.ConfigDict:
  """The data config with every field at its default (ImageNet, MaskDistill-like)."""
  return ml_collections.ConfigDict({
      "name": "imagenet2012",
      "data_dir": ml_collections.FieldReference(None, field_type=str),
      "split": "train",
      "eval_split": "validation",
      "image_size": 224,
      "crop_scale": (0.2, 1.0),
      "crop_pct": normalization.CROP_PCT,
      "flip": True,
      "color_jitter": 0.0,
      "shuffle_buffer": 10_000,
      "cache": False,
  })


ALLOWED = {
    "name": allowed.free("a TFDS dataset name, looked up before the run writes"),
    "data_dir": allowed.free("a directory, checked before the run writes"),
    "split": allowed.free("a TFDS split, looked up with the dataset"),
    "eval_split": allowed.free("a TFDS split, looked up with the dataset"),
    "image_size": allowed.integer(ge=1).bound(allowed.multiple_of_patch),
    "crop_scale": allowed.pair(gt=0, le=1, note="of the image's area"),
    "crop_pct": allowed.number(gt=0, le=1),
    "flip": allowed.flag(),
    "color_jitter": allowed.number(ge=0, note="0: off"),
    "shuffle_buffer": allowed.integer(ge=1),
    "cache": allowed.flag(),
}


def _field(config_data: ml_collections.ConfigDict, key: str) -> Any:
  """A config field, or its default when the experiment's config leaves it out."""
  return config_data.get(key, default_config()[key])


# --------------------------------------------------------------------------------------------
# Sources.
# --------------------------------------------------------------------------------------------
def _not_found(name: str, where: str) -> DatasetNotFoundError:
  return DatasetNotFoundError(
      f"{name} not found in {where}: build it there first (`tfds build {name} "
      f"--data_dir={where}`; for imagenet2012 download the archives manually and add "
      f"--manual_dir=<dir with them>), or set --config.data.data_dir to where it is built.")


def get_builder(name: str, data_dir: Optional[str] = None) -> tfds.core.DatasetBuilder:
  """The TFDS builder of `name`; "mim_digits" is built locally on first use."""
  if name == digits.NAME:
    return digits.ensure_built(data_dir)
  try:
    return tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise _not_found(name, data_dir or "$TFDS_DATA_DIR or ~/tensorflow_datasets") from None


def num_examples(config_data: ml_collections.ConfigDict, split: Optional[str] = None) -> int:
  """Examples in the (global) split, from the builder's metadata; the epoch length."""
  builder = get_builder(config_data.name, _field(config_data, "data_dir"))
  split = split or _field(config_data, "split")
  if not builder.info.splits:
    raise _not_found(builder.name, str(builder.data_dir_root))
  return builder.info.splits[split].num_examples


def _host_split(split: str) -> Any:
  """This host's even share of `split` (hosts' shares differ by at most one example)."""
  return tfds.even_splits(split, n=jax.process_count())[jax.process_index()]


def _read(builder: tfds.core.DatasetBuilder, split: Any,
          file_seed: Optional[int] = None) -> tf.data.Dataset:
  """Records {"image": encoded string [], "label": int32 []} of `split`, in a fixed order.

  With `file_seed`, the files are read in an order shuffled once by it (the same every epoch:
  a per-epoch order would make epoch e depend on the epochs read before it). TFDS's own cache is
  off: caching is `cache`'s decision.
  """
  image_feature = builder.info.features["image"]
  decoders = ({"image": tfds.decode.SkipDecoding()}
              if isinstance(image_feature, tfds.features.Image) else None)
  read_config = tfds.ReadConfig(shuffle_seed=file_seed, shuffle_reshuffle_each_iteration=False,
                                try_autocache=False)
  try:
    ds = builder.as_dataset(split=split, shuffle_files=file_seed is not None, decoders=decoders,
                            read_config=read_config)
  except AssertionError:  # TFDS's way of saying the files are not there.
    raise _not_found(builder.name, str(builder.data_dir_root)) from None

  def select(ex: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    label = ex["label"] if "label" in ex else tf.constant(-1)
    return {"image": ex["image"], "label": tf.cast(label, tf.int32)}

  return ds.map(select, num_parallel_calls=_AUTOTUNE)


def _num_records(ds: tf.data.Dataset, builder: tfds.core.DatasetBuilder, split: Any) -> int:
  """Examples in `ds`: its cardinality (TFDS knows it), else the split's metadata."""
  n = int(ds.cardinality())
  if n < 0:
    n = builder.info.splits[split].num_examples
  if n <= 0:
    raise ValueError(f"{builder.name} split {split} is empty.")
  return n


def _decoded(ds: tf.data.Dataset) -> tf.data.Dataset:
  """Decodes "image" to uint8 [H, W, 3]; undecodable records are dropped, nothing else is.

  The map does nothing but decode, so `ignore_errors` cannot hide a bug elsewhere.
  """
  if ds.element_spec["image"].dtype != tf.string:
    return ds

  def decode(ex: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    return {**ex, "image": preprocess.decode(ex["image"])}

  return ds.map(decode, num_parallel_calls=_AUTOTUNE).ignore_errors()


def _count(ds: tf.data.Dataset) -> int:
  """Elements in a finite dataset, by iterating it (fills a `cache()` on the way)."""
  return int(ds.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))


# --------------------------------------------------------------------------------------------
# Streams.
# --------------------------------------------------------------------------------------------
def _epoch_seed(seed: int, epoch: tf.Tensor) -> tf.Tensor:
  """int64 [] shuffle seed of an epoch: a stateless hash of (seed, epoch)."""
  pair = tf.stack([tf.constant(seed, tf.int64), epoch])
  return tf.random.stateless_uniform([], seed=pair, minval=None, maxval=None, dtype=tf.int64)


def _shuffled_epochs(records: tf.data.Dataset, *, seed: int, shuffle_buffer: int,
                     epoch_len: int, start: int) -> tf.data.Dataset:
  """The infinite stream of epochs, each reshuffled by its own seed, from position `start` on.

  Elements gain "_pos" int64 [], their position in the stream. Whole epochs before `start` are
  never read; the partial one is read up to `start` (undecoded, if `records` is).
  """
  first_epoch, offset = divmod(start, epoch_len)

  def one_epoch(epoch: tf.Tensor) -> tf.data.Dataset:
    return records.shuffle(shuffle_buffer, seed=_epoch_seed(seed, epoch),
                           reshuffle_each_iteration=False)

  ds = tf.data.Dataset.range(first_epoch, _FOREVER).flat_map(one_epoch).skip(offset)
  return ds.enumerate(start).map(lambda pos, ex: {**ex, _POS: pos})


def _augment(ds: tf.data.Dataset, op: preprocess.TrainOp, seed: int) -> tf.data.Dataset:
  """Applies `op` with the per-example seed fold_in((seed, host), position)."""
  host_seed = tf.constant([seed, jax.process_index()], tf.int64)

  def augment(ex: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    example_seed = tf.random.experimental.stateless_fold_in(host_seed, ex[_POS])
    return {**ex, "image": op(ex["image"], example_seed)}

  return ds.map(augment, num_parallel_calls=_AUTOTUNE)


def _with_options(ds: tf.data.Dataset) -> tf.data.Dataset:
  options = tf.data.Options()
  options.deterministic = True  # Parallel maps keep their order: reproducible streams.
  options.threading.max_intra_op_parallelism = 1  # big_vision: parallelism across examples.
  return ds.with_options(options)


def _hide_gpus_from_tf() -> None:
  """TF must not take accelerator memory that JAX needs (no-op once TF is initialised)."""
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:
    pass


# --------------------------------------------------------------------------------------------
# Global batches.
# --------------------------------------------------------------------------------------------
def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batch dimension split over the mesh's ("data", "fsdp") axes, replicated over the rest."""
  axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names)
  return NamedSharding(mesh, P(axes))


def local_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  """This host's share of the global batch; checks that it divides evenly."""
  sharding = batch_sharding(mesh)
  shards = math.prod(mesh.shape[a] for a in sharding.spec[0])
  if global_batch_size % shards or global_batch_size % jax.process_count():
    step = math.lcm(shards, jax.process_count())
    raise ValueError(f"global_batch_size={global_batch_size} must be divisible by the "
                     f"{shards} batch shards of the mesh and the {jax.process_count()} hosts: "
                     f"use a multiple of {step}.")
  return global_batch_size // jax.process_count()


class Pipeline:
  """Iterator of global batches (dicts of `jax.Array`) from one host's tf.data pipeline.

  Rows of the per-host batches carry their stream position; `num_skipped()` is the number of
  records consumed minus the examples kept, i.e. the corrupt images dropped so far on this host.
  """

  def __init__(self, ds: tf.data.Dataset, mesh: Mesh, *, global_batch_size: int, start_pos: int,
               step: int = 0, extra: Optional[Callable[[int], dict[str, np.ndarray]]] = None,
               num_batches: Optional[int] = None, epoch_len: Optional[int] = None,
               skipped_before: int = 0):
    self._it = ds.as_numpy_iterator()
    self._sharding = batch_sharding(mesh)
    self._global_batch_size = global_batch_size
    self._step = step
    self._extra = extra
    self._num_batches = num_batches
    self._epoch_len = epoch_len  # One-pass pipelines: records of the host, for the final count.
    self._start_pos = start_pos
    self._consumed = 0  # Records up to the last kept example.
    self._kept = 0
    self._skipped_before = skipped_before

  def __iter__(self) -> Iterator[Batch]:
    return self

  def __len__(self) -> int:
    if self._num_batches is None:
      raise TypeError("An infinite pipeline has no length.")
    return self._num_batches

  def num_skipped(self) -> int:
    """Corrupt images this host has dropped so far."""
    return self._skipped_before + self._consumed - self._kept

  def position(self) -> dict[str, int]:
    """Where this host's stream stands after the last yielded batch: {"records": stream
    position of the next record to read, "skipped": corrupt images dropped so far}."""
    return {"records": self._start_pos + self._consumed, "skipped": self.num_skipped()}

  def _count(self, pos: np.ndarray) -> None:
    kept = pos[pos >= 0]  # Padding rows have position -1.
    if kept.size:
      self._consumed = int(kept.max()) + 1 - self._start_pos
      self._kept += kept.size

  def __next__(self) -> Batch:
    try:
      local = next(self._it)
    except StopIteration:
      if self._epoch_len is not None:
        self._consumed = self._epoch_len  # Corrupt records after the last kept one count too.
      raise
    self._count(local.pop(_POS))
    if self._extra is not None:
      local.update(self._extra(self._step))
    self._step += 1
    return {k: self._to_global(v) for k, v in local.items()}

  def _to_global(self, local: np.ndarray) -> jax.Array:
    shape = (self._global_batch_size,) + local.shape[1:]
    return jax.make_array_from_process_local_data(self._sharding, local, shape)


def _mask_extra(mask_fn: MaskFn, seed: int, batch_size: int) -> Callable[[int], dict]:
  """step -> {"mask": uint8 [b, N]} from numpy's default_rng((seed, step, host))."""

  def extra(step: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([seed, step, jax.process_index()])
    mask = np.asarray(mask_fn(rng, batch_size), np.uint8)
    if mask.ndim != 2 or mask.shape[0] != batch_size:
      raise ValueError(f"mask_fn must return [{batch_size}, N], got {mask.shape}.")
    return {"mask": mask}

  return extra


# --------------------------------------------------------------------------------------------
# Public entry points.
# --------------------------------------------------------------------------------------------
def gather_positions(pipeline: Pipeline) -> dict[str, list[int]]:
  """Every host's `position()` as {"records": [per host], "skipped": [per host]} (a collective
  when there are several hosts: all of them call it at the same step)."""
  pos = pipeline.position()
  # 30-bit halves: int32 arrays (JAX's default) carry record counts beyond 2**31 exactly.
  local = np.array([[pos["records"] >> 30, pos["records"] & (2**30 - 1), pos["skipped"]]],
                   np.int32)
  rows = (multihost_utils.process_allgather(local, tiled=True) if jax.process_count() > 1
          else local)
  return {"records": [(int(hi) << 30) + int(lo) for hi, lo, _ in rows],
          "skipped": [int(k) for _, _, k in rows]}


def host_position(gathered: Optional[dict]) -> Optional[dict[str, int]]:
  """This host's entry of `gather_positions`' output; None when there is none for it (an older
  checkpoint, or one written with another number of hosts, whose splits differed)."""
  if not gathered or len(gathered.get("records", ())) != jax.process_count():
    return None
  i = jax.process_index()
  return {"records": gathered["records"][i], "skipped": gathered["skipped"][i]}


# `config.augment` (fine-tuning configs).
AUGMENT_ALLOWED = {
    "randaugment": allowed.checked_by(lambda v: v == "" or randaugment.parse(v),
                                      "'' (off) or a RandAugment spec like "
                                      "'rand-m9-mstd0.5-inc1'", "rand-q9", optional=True),
    "random_erasing": allowed.number(ge=0, le=1, note="a probability"),
}


def augment_kwargs(augment: Optional[ml_collections.ConfigDict]) -> dict[str, Any]:
  """`preprocess.train_op`'s fine-tuning arguments from a config's `augment` block (None: off);
  a bad RandAugment spec raises ValueError here, before any data is read."""
  if not augment:
    return {}
  kwargs = dict(randaugment=augment.randaugment or None,
                random_erasing=float(augment.random_erasing or 0.0))
  if kwargs["randaugment"]:
    randaugment.parse(kwargs["randaugment"])
  if not 0.0 <= kwargs["random_erasing"] <= 1.0:
    raise ValueError(f"augment.random_erasing={kwargs['random_erasing']}: a probability in "
                     f"[0, 1] (MAE's fine-tuning: 0.25).")
  return kwargs


def make_pretrain_iterator(config_data: ml_collections.ConfigDict, *, global_batch_size: int,
                           mesh: Mesh, seed: int, start_step: int = 0,
                           mask_fn: Optional[MaskFn] = None,
                           position: Optional[dict[str, int]] = None,
                           augment: Optional[ml_collections.ConfigDict] = None) -> Pipeline:
  """Infinite stream of augmented global batches, the one of step `start_step` first.

  `position` (this host's `Pipeline.position()` at `start_step`, kept in the checkpoint) is
  where the stream resumes without `cache`; None: step * local batch, exact only when no corrupt
  record came before.

  Yields {"image": float32 [B, S, S, 3] (ImageNet-normalised), "label": int32 [B]}, plus
  "mask": uint8 [B, N] from `mask_fn(np_rng, local_batch) -> [b, N]` when given; B is
  `global_batch_size`, S `config_data.image_size`. Host-side block masks, for example:
  `mask_fn=functools.partial(block_mask.block_masks, grid=(14, 14), ratio=0.4)`.
  """
  _hide_gpus_from_tf()
  local_b = local_batch_size(global_batch_size, mesh)
  builder = get_builder(_field(config_data, "name"), _field(config_data, "data_dir"))
  split = _host_split(_field(config_data, "split"))
  records = _read(builder, split, file_seed=seed)
  epoch_len = _num_records(records, builder, split)
  skipped_before = 0
  if _field(config_data, "cache"):
    # Decoded once; positions then count valid examples only, so resume is exact.
    records = _decoded(records).cache()
    num_valid = _count(records)
    skipped_before, epoch_len = epoch_len - num_valid, num_valid
  start = start_step * local_b
  if position is not None and not _field(config_data, "cache"):
    start, skipped_before = position["records"], position["skipped"]
  ds = _shuffled_epochs(records, seed=seed, shuffle_buffer=_field(config_data, "shuffle_buffer"),
                        epoch_len=epoch_len, start=start)
  ds = _decoded(ds)  # No-op when cached (already decoded).
  op = preprocess.train_op(_field(config_data, "image_size"),
                           scale=tuple(_field(config_data, "crop_scale")),
                           flip=_field(config_data, "flip"),
                           jitter=_field(config_data, "color_jitter"),
                           **augment_kwargs(augment))
  ds = _augment(ds, op, seed).batch(local_b, drop_remainder=True).prefetch(_AUTOTUNE)
  extra = _mask_extra(mask_fn, seed, local_b) if mask_fn is not None else None
  return Pipeline(_with_options(ds), mesh, global_batch_size=global_batch_size, start_pos=start,
                  step=start_step, extra=extra, skipped_before=skipped_before)


def make_eval_iterator(config_data: ml_collections.ConfigDict, *, global_batch_size: int,
                       mesh: Mesh, split: Optional[str] = None) -> Pipeline:
  """One deterministic pass over `split` (default `eval_split`), every example exactly once.

  Yields {"image": float32 [B, S, S, 3], "label": int32 [B], "valid": bool [B]}. The last
  batches are padded with zero images, label -1 and valid=False; every host yields the same
  number of batches, `len(pipeline)` (hosts' shares of the split differ by at most one example).
  """
  _hide_gpus_from_tf()
  local_b = local_batch_size(global_batch_size, mesh)
  builder = get_builder(_field(config_data, "name"), _field(config_data, "data_dir"))
  split = split or _field(config_data, "eval_split")
  host_split = _host_split(split)
  records = _read(builder, host_split)
  host_len = _num_records(records, builder, host_split)
  # Every host runs as many batches as the largest share needs: ceil(total / hosts) examples.
  total = _num_records(_read(builder, split), builder, split)
  largest = max(host_len, -(-total // jax.process_count()))
  num_batches = -(-largest // local_b)

  size = _field(config_data, "image_size")
  op = preprocess.eval_op(size, crop_pct=_field(config_data, "crop_pct"))
  ds = records.enumerate().map(lambda pos, ex: {**ex, _POS: pos})
  ds = _decoded(ds).map(lambda ex: {**ex, "image": op(ex["image"]), "valid": True},
                        num_parallel_calls=_AUTOTUNE)
  padding = tf.data.Dataset.from_tensors({
      "image": tf.zeros([size, size, 3], tf.float32), "label": tf.constant(-1, tf.int32),
      _POS: tf.constant(-1, tf.int64), "valid": False}).repeat()
  ds = ds.concatenate(padding).batch(local_b).take(num_batches).prefetch(_AUTOTUNE)
  return Pipeline(_with_options(ds), mesh, global_batch_size=global_batch_size, start_pos=0,
                  num_batches=num_batches, epoch_len=host_len)
