"""PNG figures of a run: loss curves, the Dynamic Alignment matrix, CLS attention maps.

Matplotlib with the Agg backend (no display needed). Every function validates its inputs,
writes `out_png` with a pixel size of exactly figsize * dpi (no tight bounding box), closes its
figure and returns the path.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import matplotlib

matplotlib.use("Agg")  # before pyplot: headless hosts and test runners have no display
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

Rows = Union[str, os.PathLike, Iterable[Mapping[str, Any]]]


def read_rows(source: Rows) -> list[dict[str, Any]]:
  """Metrics rows from a JSONL path (one JSON object per line) or an iterable of dicts."""
  if isinstance(source, (str, os.PathLike)):
    with open(source) as f:
      return [json.loads(line) for line in f if line.strip()]
  return [dict(row) for row in source]


def series(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
  """(steps [n], values [n]) of `key`, sorted by step; a step written twice (a run resumed from
  an earlier checkpoint appends again) keeps its last value; non-finite values are dropped."""
  last: dict[int, float] = {}
  for row in rows:
    if "step" in row and key in row and isinstance(row[key], (int, float)):
      last[int(row["step"])] = float(row[key])
  steps = np.array(sorted(last), dtype=np.int64)
  values = np.array([last[s] for s in steps], dtype=np.float64)
  finite = np.isfinite(values)
  return steps[finite], values[finite]


def default_loss_keys(rows: Sequence[Mapping[str, Any]]) -> list[str]:
  """"loss" and every "loss/..." key present, in first-seen order."""
  keys: dict[str, None] = {}
  for row in rows:
    for k in row:
      if k == "loss" or k.startswith("loss/"):
        keys[k] = None
  return list(keys)


def _save(fig: Any, out_png: str, dpi: int) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
  fig.savefig(out_png, dpi=dpi, format="png")
  plt.close(fig)
  return out_png


def plot_losses(source: Rows, out_png: str, keys: Optional[Sequence[str]] = None, *,
                log_scale: bool = True, figsize: tuple[float, float] = (8.0, 5.0),
                dpi: int = 100) -> str:
  """Curves of `keys` (default: "loss" and "loss/*") against the step.

  Keys whose name is "lr" or ends in "/lr" are drawn on a second y axis (another scale). The
  loss axis is logarithmic when `log_scale` and every plotted value is positive.
  """
  rows = read_rows(source)
  keys = list(keys) if keys is not None else default_loss_keys(rows)
  if not keys:
    raise ValueError("No keys to plot: the rows have no 'loss' or 'loss/...' entries.")
  curves = {k: series(rows, k) for k in keys}
  missing = [k for k, (steps, _) in curves.items() if not len(steps)]
  if missing:
    raise ValueError(f"No finite values with a step for {missing}; keys present: "
                     f"{sorted({k for r in rows for k in r} - {'step'})}.")
  is_lr = lambda k: k == "lr" or k.endswith("/lr")
  fig, ax = plt.subplots(figsize=figsize)
  lr_ax = ax.twinx() if any(is_lr(k) for k in keys) else None
  for i, (key, (steps, values)) in enumerate(curves.items()):
    target = lr_ax if is_lr(key) else ax
    target.plot(steps, values, label=key, color=f"C{i}", linestyle="--" if is_lr(key) else "-")
  losses = [v for k, (_, v) in curves.items() if not is_lr(k)]
  if log_scale and losses and all((v > 0).all() for v in losses):
    ax.set_yscale("log")
  ax.set_xlabel("step")
  ax.set_ylabel("loss")
  handles, labels = ax.get_legend_handles_labels()
  if lr_ax is not None:
    lr_ax.set_ylabel("learning rate")
    more = lr_ax.get_legend_handles_labels()
    handles, labels = handles + more[0], labels + more[1]
  ax.legend(handles, labels, loc="upper right", fontsize="small")
  ax.grid(True, alpha=0.3)
  return _save(fig, out_png, dpi)


def plot_alignment(matrix: Any, out_png: str, *, title: str = "Dynamic Alignment",
                   figsize: tuple[float, float] = (6.0, 5.0), dpi: int = 100) -> str:
  """Heatmap of an alignment matrix [T, S] (row j: weights of the student blocks fused for
  teacher layer j), with a colour bar; rows = teacher layers, columns = student blocks."""
  w = np.asarray(matrix, dtype=np.float64)
  if w.ndim != 2 or 0 in w.shape:
    raise ValueError(f"The alignment matrix must be 2-D [T, S], got shape {w.shape}.")
  if not np.isfinite(w).all():
    raise ValueError("The alignment matrix has non-finite entries.")
  fig, ax = plt.subplots(figsize=figsize)
  image = ax.imshow(w, cmap="viridis", aspect="auto", interpolation="nearest")
  fig.colorbar(image, ax=ax, label="weight")
  ax.set_xlabel("student block")
  ax.set_ylabel("teacher layer")
  ax.set_xticks(range(w.shape[1]))
  ax.set_yticks(range(w.shape[0]))
  ax.set_title(title)
  return _save(fig, out_png, dpi)


def _attention_maps(attn: np.ndarray, grid: tuple[int, int], size: tuple[int, int]
                    ) -> np.ndarray:
  """[n, gh*gw] -> [n, H, W]: each map scaled to [0, 1] and upsampled by pixel repetition."""
  gh, gw = grid
  maps = attn.reshape(-1, gh, gw)
  lo = maps.min(axis=(1, 2), keepdims=True)
  span = maps.max(axis=(1, 2), keepdims=True) - lo
  maps = (maps - lo) / np.where(span > 0, span, 1.0)
  h, w = size
  return np.repeat(np.repeat(maps, h // gh, axis=1), w // gw, axis=2)


def plot_cls_attention(images: Any, attn: Any, grid: Union[int, tuple[int, int]], out_png: str,
                       *, alpha: float = 0.6, panel_inches: float = 2.0, dpi: int = 100) -> str:
  """Images [n, H, W, 3] in [0, 1] (top row) and their CLS -> patch attention [n, gh*gw]
  overlaid (bottom row). The figure is n * panel_inches wide and 2 * panel_inches tall."""
  x = np.asarray(images, dtype=np.float64)
  a = np.asarray(attn, dtype=np.float64)
  gh, gw = (grid, grid) if isinstance(grid, int) else tuple(grid)
  if x.ndim != 4 or x.shape[-1] != 3 or x.shape[0] == 0:
    raise ValueError(f"images must be [n, H, W, 3] with n >= 1, got shape {x.shape}.")
  n, h, w, _ = x.shape
  if a.shape != (n, gh * gw):
    raise ValueError(f"attn must be [n, gh*gw] = [{n}, {gh * gw}] for grid {gh}x{gw}, got "
                     f"{a.shape}.")
  if h % gh or w % gw:
    raise ValueError(f"Image size {h}x{w} is not a multiple of the grid {gh}x{gw}.")
  if not (np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0):
    raise ValueError(f"images must be in [0, 1] (un-normalise them first), got range "
                     f"[{x.min():.3g}, {x.max():.3g}].")
  if not np.isfinite(a).all():
    raise ValueError("attn has non-finite entries.")
  maps = _attention_maps(a, (gh, gw), (h, w))
  fig, axes = plt.subplots(2, n, figsize=(panel_inches * n, panel_inches * 2), squeeze=False)
  for i in range(n):
    axes[0, i].imshow(x[i])
    axes[1, i].imshow(x[i])
    axes[1, i].imshow(maps[i], cmap="jet", alpha=alpha, vmin=0.0, vmax=1.0)
    for ax in axes[:, i]:
      ax.set_axis_off()
  fig.subplots_adjust(left=0.01, right=0.99, top=0.99, bottom=0.01, wspace=0.05, hspace=0.05)
  return _save(fig, out_png, dpi)


def grid_side(num_patches: int) -> int:
  """The side of a square grid of `num_patches` patches (ValueError if not a square)."""
  side = math.isqrt(num_patches)
  if side * side != num_patches:
    raise ValueError(f"{num_patches} patches do not form a square grid.")
  return side


def plot_sweep(names: Sequence[str], ours: Mapping[str, Sequence[Optional[float]]],
               paper: Sequence[Optional[float]], out_png: str, *, paper_label: str = "paper",
               spread: Optional[Mapping[str, Sequence[Optional[float]]]] = None,
               panel_inches: float = 3.5, dpi: int = 100) -> str:
  """A sweep's rows side by side: one panel of horizontal bars per metric of ours that any row
  has (None = no value, no bar), then one of the paper's numbers, rows in sweep order (top
  first), each bar labelled with its value. `spread` (optional, by metric like `ours`): a
  half-width drawn as an error bar on the row's bar (seeds' standard deviation). The figure is
  panel_inches wide per panel."""
  spread = spread or {}
  panels = [(title, values) for title, values in ours.items()
            if any(v is not None for v in values)]
  panels.append((paper_label, list(paper)))
  for title, values in panels:
    if len(values) != len(names):
      raise ValueError(f"{title!r} has {len(values)} values for {len(names)} rows.")
  height = max(2.0, 0.45 * len(names) + 1.0)
  fig, axes = plt.subplots(1, len(panels), figsize=(panel_inches * len(panels), height),
                           squeeze=False, sharey=True)
  rows = np.arange(len(names))
  for ax, (title, values) in zip(axes[0], panels):
    known = [(i, float(v)) for i, v in enumerate(values) if v is not None and np.isfinite(v)]
    if known:
      idx, vals = zip(*known)
      half = [spread.get(title, [None] * len(values))[i] or 0.0 for i in idx]
      ax.barh(idx, vals, color="C1" if ax is axes[0, -1] else "C0",
              xerr=half if any(half) else None, capsize=3)
      lo = min(v - h for v, h in zip(vals, half))
      hi = max(v + h for v, h in zip(vals, half))
      pad = (hi - lo) * 0.5 or abs(hi) * 0.05 or 1.0
      ax.set_xlim(lo - pad, hi + pad)  # the differences between rows are what matters
      for (i, v), h in zip(known, half):  # the label right of the error bar
        ax.text(v + h, i, f" {v:.4g}", va="center", fontsize="small")
    ax.set_title(title, fontsize="small")
    ax.grid(True, axis="x", alpha=0.3)
  axes[0, 0].set_yticks(rows)
  axes[0, 0].set_yticklabels(names, fontsize="small")
  axes[0, 0].invert_yaxis()
  fig.tight_layout()
  return _save(fig, out_png, dpi)


def plot_curves(curves: Mapping[str, tuple[Any, Any]], out_png: str, *, title: str = "loss",
                log_scale: bool = True, figsize: tuple[float, float] = (8.0, 5.0),
                dpi: int = 100) -> str:
  """Several runs' curves on one axis: {label: (steps [n], values [n])} (e.g. `series` of each
  run's "loss"), logarithmic when `log_scale` and every value is positive."""
  drawn = {k: v for k, v in curves.items() if len(v[0])}
  if not drawn:
    raise ValueError(f"No curve has a value to plot ({sorted(curves)}).")
  fig, ax = plt.subplots(figsize=figsize)
  for i, (label, (steps, values)) in enumerate(drawn.items()):
    ax.plot(steps, values, label=label, color=f"C{i % 10}")
  if log_scale and all((np.asarray(v) > 0).all() for _, v in drawn.values()):
    ax.set_yscale("log")
  ax.set_xlabel("step")
  ax.set_title(title, fontsize="small")
  ax.legend(loc="upper right", fontsize="x-small")
  ax.grid(True, alpha=0.3)
  return _save(fig, out_png, dpi)
