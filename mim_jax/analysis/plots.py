"""PNGs of the analysis measures: per-layer curves, spectra, Fourier profiles, maps, landscapes.

Matplotlib with the Agg backend. As in `mim_jax.plots`, every function writes `out_png` at
exactly figsize * dpi pixels (no tight bounding box), closes its figure and returns the path.
Curves of several models (student, teacher) share a figure: pass {name: values}.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # headless hosts and test runners have no display
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
from matplotlib.ticker import MaxNLocator  # pylint: disable=wrong-import-position

Size = tuple[float, float]


def _save(fig: Any, out_png: str, dpi: int) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
  fig.savefig(out_png, dpi=dpi, format="png")
  plt.close(fig)
  return out_png


def _array(values: Any, ndim: int, name: str) -> np.ndarray:
  x = np.asarray(values, dtype=np.float64)
  if x.ndim != ndim or 0 in x.shape:
    raise ValueError(f"{name} must be a non-empty {ndim}-D array, got shape {x.shape}.")
  return x


def _layer_axis(ax: Any, ylabel: str, title: str) -> None:
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # layers are whole numbers
  ax.set_xlabel("layer")
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.legend(fontsize="small")
  ax.grid(True, alpha=0.3)


def _depth_colors(n: int) -> list:
  """Dark for shallow layers, light for deep ones (the paper's convention)."""
  return [plt.get_cmap("viridis")(v) for v in np.linspace(0.0, 0.9, n)]


def plot_per_head(series: Mapping[str, Any], out_png: str, *, ylabel: str, title: str = "",
                  figsize: Size = (7.0, 4.5), dpi: int = 100) -> str:
  """Per-head values [L, H] of each model against the layer: one dot per head, a line through
  the head means."""
  if not series:
    raise ValueError("Nothing to plot: `series` is empty.")
  fig, ax = plt.subplots(figsize=figsize)
  for c, (name, values) in enumerate(series.items()):
    v = _array(values, 2, f"{name} values [L, H]")
    layers = np.arange(1, v.shape[0] + 1)
    jitter = (c - (len(series) - 1) / 2) * 0.1  # side by side when models share a layer
    ax.scatter(np.repeat(layers, v.shape[1]) + jitter, v.reshape(-1), s=10, alpha=0.5,
               color=f"C{c}")
    ax.plot(layers + jitter, v.mean(1), color=f"C{c}", marker="o", label=name)
  _layer_axis(ax, ylabel, title)
  return _save(fig, out_png, dpi)


def plot_per_layer(series: Mapping[str, Any], out_png: str, *, ylabel: str, title: str = "",
                   figsize: Size = (7.0, 4.5), dpi: int = 100) -> str:
  """One value per layer [L] for each model."""
  if not series:
    raise ValueError("Nothing to plot: `series` is empty.")
  fig, ax = plt.subplots(figsize=figsize)
  for name, values in series.items():
    v = _array(values, 1, f"{name} values [L]")
    ax.plot(np.arange(1, len(v) + 1), v, marker="o", label=name)
  _layer_axis(ax, ylabel, title)
  return _save(fig, out_png, dpi)


def plot_layer_curves(series: Mapping[str, Any], out_png: str, *, xlabel: str, ylabel: str,
                      title: str = "", xs: Optional[Sequence[float]] = None,
                      panel: Size = (5.0, 4.0), dpi: int = 100) -> str:
  """One panel per model; in it one curve per layer [L, K] coloured by depth (lighter =
  deeper): singular value spectra, Fourier profiles."""
  if not series:
    raise ValueError("Nothing to plot: `series` is empty.")
  fig, axes = plt.subplots(1, len(series), figsize=(panel[0] * len(series), panel[1]),
                           squeeze=False)
  for ax, (name, values) in zip(axes[0], series.items()):
    v = _array(values, 2, f"{name} curves [L, K]")
    x = np.arange(v.shape[1]) if xs is None else np.asarray(xs, np.float64)
    if x.shape != (v.shape[1],):
      raise ValueError(f"xs must have {v.shape[1]} entries, got {x.shape}.")
    for i, color in enumerate(_depth_colors(v.shape[0])):
      ax.plot(x, v[i], color=color, label=f"layer {i + 1}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{name} {title}".strip())
    ax.grid(True, alpha=0.3)
  axes[0, -1].legend(fontsize="x-small", loc="best")
  # Margins in inches, so that the y label fits however many panels there are.
  width = panel[0] * len(series)
  fig.subplots_adjust(left=0.9 / width, right=1.0 - 0.2 / width, wspace=0.35, bottom=0.14)
  return _save(fig, out_png, dpi)


def plot_maps(maps: Any, out_png: str, *, row_labels: Sequence[str] = (),
              col_labels: Sequence[str] = (), panel_inches: float = 1.6, dpi: int = 100) -> str:
  """A grid of heatmaps [R, C, gh, gw] (e.g. layers x queries), each on its own colour scale,
  the largest value of a map brightest."""
  m = _array(maps, 4, "maps [R, C, gh, gw]")
  if not np.isfinite(m).all():
    raise ValueError("maps have non-finite entries.")
  r, c = m.shape[:2]
  fig, axes = plt.subplots(r, c, figsize=(panel_inches * c, panel_inches * r), squeeze=False)
  for i in range(r):
    for j in range(c):
      ax = axes[i, j]
      ax.imshow(m[i, j], cmap="inferno", interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      if j == 0 and i < len(row_labels):
        ax.set_ylabel(row_labels[i], fontsize="small")
      if i == 0 and j < len(col_labels):
        ax.set_title(col_labels[j], fontsize="small")
  fig.subplots_adjust(left=0.08, right=0.99, top=0.92, bottom=0.01, wspace=0.05, hspace=0.05)
  return _save(fig, out_png, dpi)


def plot_landscape(alphas: Any, betas: Any, surface: Any, out_png: str, *,
                   title: str = "loss along the top-2 Hessian eigenvectors", levels: int = 20,
                   figsize: Size = (6.0, 5.0), dpi: int = 100) -> str:
  """Contours of a loss surface [n, m] over steps alphas [n] (x) and betas [m] (y)."""
  a = _array(alphas, 1, "alphas")
  b = _array(betas, 1, "betas")
  z = _array(surface, 2, "surface")
  if z.shape != (len(a), len(b)):
    raise ValueError(f"surface must be [len(alphas), len(betas)] = {(len(a), len(b))}, got "
                     f"{z.shape}.")
  if not np.isfinite(z).all():
    raise ValueError("surface has non-finite entries.")
  fig, ax = plt.subplots(figsize=figsize)
  if np.ptp(z) > 0:
    filled = ax.contourf(a, b, z.T, levels=levels, cmap="viridis")
    ax.contour(a, b, z.T, levels=levels, colors="k", linewidths=0.3)
    fig.colorbar(filled, ax=ax, label="loss")
  else:  # a flat surface has no contour lines
    ax.imshow(z.T, origin="lower", extent=(a[0], a[-1], b[0], b[-1]), cmap="viridis")
  ax.plot([0.0], [0.0], "r+", markersize=10)
  ax.set_xlabel("step along eigenvector 1")
  ax.set_ylabel("step along eigenvector 2")
  ax.set_title(title, fontsize="small")
  return _save(fig, out_png, dpi)
