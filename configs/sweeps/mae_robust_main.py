"""Robust MAE's Tables 2 and 5: MAE against robust MAE at 800 epochs, as overrides of
configs/mae_robust_b16.py.

Rows: ViT-B/16 MAE (the paper's own implementation: no decoder drop edge, MAE's crop 0.2-1),
ViT-B/16 robust MAE (the config), ViT-B/16 robust MAE with the mid-level mask tokens (Table 5:
another 25% of the patches enter after block 8), then ViT-L/16 MAE and robust MAE (crop 0.2-1
for both, as the paper changes it for B only). The tables' other rows are other methods (MoCo v3,
DINO, BEiT, iBOT, MaskFeat) or MAE's 1600-epoch numbers quoted from its paper
(configs/mae_b16.py --config.total_epochs=1600).
"""
from typing import Any

CONFIG = "configs/mae_robust_b16.py"
METRIC = "ImageNet-1k fine-tune top-1 (%)"
EVALUATION = "finetune"
RECIPE = "mae_robust"  # configs/finetune.py
_MAE = {"objective.decoder.attn_drop": 0.0, "data.crop_scale": (0.2, 1.0)}
_ROBUST_B = {"objective.decoder.attn_drop": 0.3, "data.crop_scale": (0.5, 1.0)}
_ROBUST_L = {"objective.decoder.attn_drop": 0.3, "data.crop_scale": (0.2, 1.0)}
ROWS = [
    ({"student.variant": "B/16", **_MAE, "objective.mid_mask_ratio": 0.0}, 83.3),
    ({"student.variant": "B/16", **_ROBUST_B, "objective.mid_mask_ratio": 0.0}, 83.6),
    ({"student.variant": "B/16", **_ROBUST_B, "objective.mid_mask_ratio": 0.25}, 83.5),
    ({"student.variant": "L/16", **_MAE, "objective.mid_mask_ratio": 0.0}, 85.3),
    ({"student.variant": "L/16", **_ROBUST_L, "objective.mid_mask_ratio": 0.0}, 85.6),
]


def sweep() -> list[dict[str, Any]]:
  return [point for point, _ in ROWS]


def paper() -> list[float]:
  return [number for _, number in ROWS]
