"""Robust MAE's Table 1: the global normalisation before the per-patch one, as overrides of
configs/mae_robust_b16.py (800 epochs).

Rows in the paper's order: ViT-B/16 with no global normalisation, Global RGB (ImageNet's
per-channel statistics), Global Patch (the dataset's per-dimension statistics); then the same
for ViT-L/16 (MAE's crop scale 0.2-1, as the config gives every size but B). Global Patch needs
the statistics first, one file per patch size (the path is a placeholder to replace):
  python -m mim_jax.tools.dataset_stats --config configs/mae_robust_b16.py --out stats/patch16.npz
Every row is expressible.
"""
from typing import Any

CONFIG = "configs/mae_robust_b16.py"
METRIC = "ImageNet-1k fine-tune top-1 (%)"
EVALUATION = "finetune"
RECIPE = "mae_robust"  # configs/finetune.py
STATS = "stats/patch16.npz"
_B = {"student.variant": "B/16", "data.crop_scale": (0.5, 1.0)}
_L = {"student.variant": "L/16", "data.crop_scale": (0.2, 1.0)}
ROWS = [
    ({**_B, "objective.global_norm": "none"}, 81.99),
    ({**_B, "objective.global_norm": "global_rgb"}, 83.25),
    ({**_B, "objective.global_norm": "global_patch", "objective.stats_path": STATS}, 83.28),
    ({**_L, "objective.global_norm": "none"}, 84.70),
    ({**_L, "objective.global_norm": "global_rgb"}, 85.29),
    ({**_L, "objective.global_norm": "global_patch", "objective.stats_path": STATS}, 85.47),
]


def sweep() -> list[dict[str, Any]]:
  return [point for point, _ in ROWS]


def paper() -> list[float]:
  return [number for _, number in ROWS]
