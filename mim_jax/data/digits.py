"""`mim_digits`: a demo TFDS dataset built locally from scikit-learn's bundled digits (no download).

scikit-learn ships 1,797 labelled 8x8 greyscale digits with values 0..16 (`load_digits()`). The
builder turns each into a 32x32 RGB uint8 image: values are scaled to 0..255, inverted (dark ink
on a light background, like a scanned page), upsampled 4x with PIL bicubic so strokes stay smooth,
and repeated over 3 channels. Images are stored PNG-encoded, like every TFDS image dataset, so the
demo exercises the same decode path as ImageNet.

Splits: a stratified, seeded (random_state=0) split into `train` (1,497) and `test` (300, 30 of
each digit, give or take one). Labels: 10 classes, "0".."9".

`ensure_built(data_dir)` builds it on first use into `data_dir` (None: `$TFDS_DATA_DIR`, else
`~/tensorflow_datasets`) and returns the builder; later calls reuse the files. Importing this
module registers the name, so `tfds.builder("mim_digits", data_dir=...)` works afterwards.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from typing import Iterator, Optional

from etils import epath
import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

NAME = "mim_digits"
IMAGE_SIZE = 32
NUM_TEST = 300
_SPLIT_SEED = 0


def _to_rgb(digit: np.ndarray) -> np.ndarray:
  """float [8, 8] in 0..16 -> uint8 [IMAGE_SIZE, IMAGE_SIZE, 3], dark ink on light paper."""
  grey = np.round(255.0 - digit * (255.0 / 16.0)).astype(np.uint8)
  big = Image.fromarray(grey, mode="L").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC)
  return np.repeat(np.asarray(big)[..., None], 3, axis=-1)


def split_indices() -> dict[str, np.ndarray]:
  """Indices into `load_digits()` of each split, sorted: {'train': [1497], 'test': [300]}."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  from sklearn.model_selection import train_test_split  # pylint: disable=g-import-not-at-top
  labels = load_digits().target
  train, test = train_test_split(np.arange(len(labels)), test_size=NUM_TEST, stratify=labels,
                                 random_state=_SPLIT_SEED)
  return {"train": np.sort(train), "test": np.sort(test)}


class MimDigits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 8x8 digits upsampled to 32x32 RGB, split 1,497 / 300."""

  VERSION = tfds.core.Version("1.0.0")
  # TFDS finds a builder's files (checksums, metadata) next to its code; saying where directly
  # spares it a probe that needs the optional `importlib_resources` package.
  code_path = epath.Path(__file__)
  RELEASE_NOTES = {"1.0.0": "32x32 bicubic, inverted, stratified 1497/300 split."}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3)),
            "label": tfds.features.ClassLabel(names=[str(d) for d in range(10)]),
        }),
        supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the data ships with scikit-learn.
    return {name: self._generate_examples(idx) for name, idx in split_indices().items()}

  def _generate_examples(self, indices: np.ndarray) -> Iterator[tuple[int, dict]]:
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
    digits = load_digits()
    for i in indices:
      yield int(i), {"image": _to_rgb(digits.images[i]), "label": int(digits.target[i])}


@contextlib.contextmanager
def _build_lock(data_dir: str) -> Iterator[None]:
  """Serialises building between processes sharing a disk (local multi-process runs)."""
  os.makedirs(data_dir, exist_ok=True)
  with open(os.path.join(data_dir, ".mim_digits.lock"), "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def is_built(data_dir: Optional[str] = None) -> bool:
  """Whether `data_dir` holds the built dataset (read only: nothing is written)."""
  return MimDigits(data_dir=data_dir).is_prepared()


def ensure_built(data_dir: Optional[str] = None) -> tfds.core.DatasetBuilder:
  """Returns the `mim_digits` builder, building it into `data_dir` first if needed (~2 s).
  A built dataset is only read (its directory may be read-only); the build lock is taken, inside
  `data_dir`, only to build."""
  builder = MimDigits(data_dir=data_dir)
  if builder.is_prepared():
    return builder
  with _build_lock(builder.data_dir_root):
    # Statistics are skipped: they take longer than the data and nothing here reads them.
    config = tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP)
    builder.download_and_prepare(download_config=config)
  return MimDigits(data_dir=data_dir)  # A fresh builder reads the info that was just written.
