"""Plots: PNGs are written at the expected pixel size, inputs are validated."""
import json

import numpy as np
import pytest
from PIL import Image

from mim_jax import plots


def png_size(path):
  with Image.open(path) as im:
    assert im.format == "PNG"
    im.load()
    return im.size  # (width, height)


def write_jsonl(path, rows):
  with open(path, "w") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")


def rows(n=20):
  return [{"step": s, "loss": 2.0 / (s + 1), "loss/layer11": 1.0 / (s + 1),
           "lr": 1e-3 * min(1.0, s / 5), "grad_norm": 1.0} for s in range(1, n + 1)]


def test_plot_losses_from_jsonl(tmp_path):
  path = tmp_path / "metrics.jsonl"
  # A resumed run appends steps 15.. again: the last value of a step wins.
  data = rows() + [{"step": 15, "loss": 5.0}]
  write_jsonl(path, data)
  out = plots.plot_losses(str(path), str(tmp_path / "loss.png"), keys=["loss", "loss/layer11",
                                                                       "lr"])
  assert png_size(out) == (800, 500)
  steps, values = plots.series(plots.read_rows(str(path)), "loss")
  assert list(steps) == list(range(1, 21)) and values[14] == 5.0


def test_plot_losses_default_keys_and_size(tmp_path):
  assert plots.default_loss_keys(rows()) == ["loss", "loss/layer11"]
  out = plots.plot_losses(rows(), str(tmp_path / "sub" / "l.png"), figsize=(4, 3), dpi=50)
  assert png_size(out) == (200, 150)


def test_plot_losses_validates(tmp_path):
  with pytest.raises(ValueError, match="No keys"):
    plots.plot_losses([{"step": 1, "acc": 0.5}], str(tmp_path / "x.png"))
  with pytest.raises(ValueError, match="loss/layer3"):
    plots.plot_losses(rows(), str(tmp_path / "x.png"), keys=["loss/layer3"])
  with pytest.raises(ValueError, match="No finite"):
    plots.plot_losses([{"step": 1, "loss": float("nan")}], str(tmp_path / "x.png"))


def test_plot_alignment(tmp_path):
  w = np.eye(12) + 0.01
  out = plots.plot_alignment(w[:5], str(tmp_path / "align.png"))
  assert png_size(out) == (600, 500)
  with pytest.raises(ValueError, match="2-D"):
    plots.plot_alignment(np.zeros(4), str(tmp_path / "x.png"))
  with pytest.raises(ValueError, match="non-finite"):
    plots.plot_alignment(np.full((2, 2), np.inf), str(tmp_path / "x.png"))


def test_plot_cls_attention(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(3, 16, 16, 3))
  attn = rng.dirichlet(np.ones(16), size=3)
  out = plots.plot_cls_attention(images, attn, 4, str(tmp_path / "attn.png"))
  assert png_size(out) == (600, 400)
  with Image.open(out) as im:
    assert np.asarray(im).std() > 0  # not blank
  with pytest.raises(ValueError, match=r"\[n, H, W, 3\]"):
    plots.plot_cls_attention(images[..., 0], attn, 4, str(tmp_path / "x.png"))
  with pytest.raises(ValueError, match="attn must be"):
    plots.plot_cls_attention(images, attn[:, :9], 4, str(tmp_path / "x.png"))
  with pytest.raises(ValueError, match="multiple of the grid"):
    plots.plot_cls_attention(images, rng.uniform(size=(3, 9)), 3, str(tmp_path / "x.png"))
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    plots.plot_cls_attention(images * 4 - 2, attn, 4, str(tmp_path / "x.png"))


def test_grid_side():
  assert plots.grid_side(196) == 14
  with pytest.raises(ValueError, match="square"):
    plots.grid_side(10)
