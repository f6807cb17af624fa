"""Robust MAE's Figure 2 (Section 3.2): pretraining loss curves of the reconstruction targets,
100 epochs each, as overrides of configs/mae_robust_b16.py (ViT-B/16).

The figure draws curves only: the paper prints no number, and what it compares is the loss
itself (its point: the loss does not predict the fine-tune accuracy), so a row ends with its
pretraining (EVALUATION "loss"); --summarize writes the curves to losses.png. The curves the text
names, in its order:
  Global RGB normalisation                  (global_rgb, no per-patch normalisation)
  Global Patch normalisation                (global_patch, no per-patch normalisation)
  Global RGB + per-patch normalisation      (global_rgb, norm_pix)
  Global Patch + per-patch normalisation    (global_patch, norm_pix)
  per-patch normalisation of raw pixels     (none, norm_pix: the "green curve")
The figure's exact set of curves cannot be read from the text; these are the five it describes.
Global Patch needs the dataset statistics first (the path is a placeholder to replace):
  python -m mim_jax.tools.dataset_stats --config configs/mae_robust_b16.py --out stats/patch16.npz
"""
from typing import Any

CONFIG = "configs/mae_robust_b16.py"
METRIC = "pretraining loss (curves; Figure 2 prints no number)"
EVALUATION = "loss"
STATS = "stats/patch16.npz"
_PATCH = {"objective.global_norm": "global_patch", "objective.stats_path": STATS}
ROWS = [
    {"objective.global_norm": "global_rgb", "objective.norm_pix": False},
    {**_PATCH, "objective.norm_pix": False},
    {"objective.global_norm": "global_rgb", "objective.norm_pix": True},
    {**_PATCH, "objective.norm_pix": True},
    {"objective.global_norm": "none", "objective.norm_pix": True},
]


def sweep() -> list[dict[str, Any]]:
  return [dict(point, total_epochs=100.0) for point in ROWS]
