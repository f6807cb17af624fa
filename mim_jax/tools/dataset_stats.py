"""Dataset pixel statistics for robust MAE's global target normalisation.

  python -m mim_jax.tools.dataset_stats --config configs/mae_robust_b16.py --out stats.npz \
      [--num_batches 100] [--batch_size 256]

reads `num_batches` batches of the config's pretraining pipeline (`make_pretrain_iterator`: the
same crops, flips and seed as training, so the statistics are those of the images the targets are
made from), maps them back to pixels in [0, 1], and writes an .npz with

  rgb_mean, rgb_std      float32 [3]        per channel, over every pixel of every image
  patch_mean, patch_std  float32 [p*p*3]    per dimension of the patch vector (`layers.patchify`
                                            order: row, column, channel), over every patch
  patch, image_size, num_images             int, for checks

Standard deviations are population ones (divisor = count). Moments are merged batch by batch in
float64 (Chan et al.'s pairwise update), so the result does not depend on how the images are
batched. Point `objective.stats_path` at the file. Single host: the tool reads the whole global
batch on this process.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Iterable, Optional, Sequence

import numpy as np

from mim_jax import config as config_lib
from mim_jax import sharding
from mim_jax.data.normalization import STUDENT_MEAN, STUDENT_STD
from mim_jax.models import layers
from mim_jax.tools import config_file


@dataclasses.dataclass(frozen=True)
class Moments:
  """Running count, mean [D] and sum of squared deviations [D], float64."""
  count: int
  mean: np.ndarray
  m2: np.ndarray

  @classmethod
  def zeros(cls, dim: int) -> "Moments":
    return cls(0, np.zeros(dim), np.zeros(dim))

  def update(self, rows: np.ndarray) -> "Moments":
    """Merges rows [M, D] into the moments (Chan et al.'s parallel update)."""
    rows = np.asarray(rows, np.float64)
    m = rows.shape[0]
    if m == 0:
      return self
    mean_b = rows.mean(0)
    m2_b = np.square(rows - mean_b).sum(0)
    n = self.count + m
    delta = mean_b - self.mean
    mean = self.mean + delta * (m / n)
    m2 = self.m2 + m2_b + np.square(delta) * (self.count * m / n)
    return Moments(n, mean, m2)

  def std(self) -> np.ndarray:
    return np.sqrt(self.m2 / max(self.count, 1))


def to_pixels(images: np.ndarray) -> np.ndarray:
  """Student-normalised [B, H, W, 3] -> pixels in [0, 1], float64."""
  return np.asarray(images, np.float64) * np.asarray(STUDENT_STD) + np.asarray(STUDENT_MEAN)


def image_stats(batches: Iterable[np.ndarray], patch: int) -> dict[str, np.ndarray]:
  """Statistics (see the module docstring) over batches of student-normalised images
  [B, H, W, 3]."""
  rgb, per_dim, num_images, size = None, None, 0, None
  for images in batches:
    pixels = to_pixels(images)
    if rgb is None:
      size = pixels.shape[1]
      rgb, per_dim = Moments.zeros(3), Moments.zeros(patch * patch * 3)
    rgb = rgb.update(pixels.reshape(-1, 3))
    patches = layers.patchify(pixels, patch)
    per_dim = per_dim.update(patches.reshape(-1, patches.shape[-1]))
    num_images += pixels.shape[0]
  if rgb is None:
    raise ValueError("No batches: cannot compute statistics of an empty stream.")
  return {"rgb_mean": rgb.mean.astype(np.float32), "rgb_std": rgb.std().astype(np.float32),
          "patch_mean": per_dim.mean.astype(np.float32),
          "patch_std": per_dim.std().astype(np.float32),
          "patch": np.int32(patch), "image_size": np.int32(size),
          "num_images": np.int64(num_images)}


def save(path: str, stats: dict[str, np.ndarray]) -> None:
  with open(path, "wb") as f:
    np.savez(f, **stats)


def pipeline_batches(config, num_batches: int, batch_size: int) -> Iterable[np.ndarray]:
  """`num_batches` image batches [B, S, S, 3] of the config's pretraining pipeline."""
  # Imported here: TensorFlow is only needed when reading a real dataset.
  from mim_jax.data import input_pipeline  # pylint: disable=import-outside-toplevel
  mesh = sharding.make_mesh({"data": -1})
  it = input_pipeline.make_pretrain_iterator(config.data, global_batch_size=batch_size,
                                             mesh=mesh, seed=config.seed)
  for _ in range(num_batches):
    yield np.asarray(next(it)["image"])


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", required=True, help="path[:arg] of an experiment config")
  parser.add_argument("--out", required=True, help="the .npz to write")
  parser.add_argument("--num_batches", type=int, default=100)
  parser.add_argument("--batch_size", type=int, default=256)
  args = parser.parse_args(argv)
  config = config_file.load(args.config)
  _, patch = config_lib.decode_variant(config.student.variant)
  stats = image_stats(pipeline_batches(config, args.num_batches, args.batch_size), patch)
  save(args.out, stats)
  fmt = lambda v: "(" + ", ".join(f"{x:.4f}" for x in v) + ")"
  print(f"{args.out}: {int(stats['num_images'])} images of {config.data.name}, patch {patch}; "
        f"rgb mean {fmt(stats['rgb_mean'])} std {fmt(stats['rgb_std'])}")


if __name__ == "__main__":
  main()
