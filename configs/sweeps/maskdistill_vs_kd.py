"""MaskDistill's Table 5: MaskDistill against feature knowledge distillation, as overrides of
configs/maskdistill_b16_clip_b16.py (CLIP-B/16 teacher).

Knowledge distillation is the special case "mask ratio 0, loss on all patches": no mask
(`mask.kind = "none"`, the student sees every patch) and `objective.loss_on = "all"`; the
MaskDistill rows are the config's 40% block masks with the loss on the masked patches. Rows in
the paper's order: ViT-B/16 at 300 epochs (KD, MaskDistill), ViT-B/16 at 800 epochs (KD,
MaskDistill), ViT-L/16 at 300 epochs (KD, MaskDistill; the config's L settings: drop path 0.2,
layer scale 1e-5). Every row is expressible.
"""
from typing import Any

CONFIG = "configs/maskdistill_b16_clip_b16.py"
METRIC = "ImageNet-1k fine-tune top-1 (%)"
EVALUATION = "finetune"
RECIPE = "maskdistill"  # configs/finetune.py
_KD = {"mask.kind": "none", "mask.ratio": 0.0, "objective.loss_on": "all"}
_MD = {"mask.kind": "block", "mask.ratio": 0.4, "objective.loss_on": "masked"}
# The student's size settings of MaskDistill's Table 11 (drop path, layer scale), by variant.
B16 = {"student.variant": "B/16", "student.drop_path": 0.1, "student.layer_scale": 0.1}
L16 = {"student.variant": "L/16", "student.drop_path": 0.2, "student.layer_scale": 1e-5}
H14 = {"student.variant": "H/14", "student.drop_path": 0.25, "student.layer_scale": 1e-5}
ROWS = [
    ({**B16, **_KD, "total_epochs": 300.0}, 85.3),
    ({**B16, **_MD, "total_epochs": 300.0}, 85.0),
    ({**B16, **_KD, "total_epochs": 800.0}, 85.2),
    ({**B16, **_MD, "total_epochs": 800.0}, 85.5),
    ({**L16, **_KD, "total_epochs": 300.0}, 85.4),
    ({**L16, **_MD, "total_epochs": 300.0}, 86.8),
]


def sweep() -> list[dict[str, Any]]:
  return [point for point, _ in ROWS]


def paper() -> list[float]:
  return [number for _, number in ROWS]
