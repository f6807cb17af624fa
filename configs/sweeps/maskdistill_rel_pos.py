"""MaskDistill's Table 2 (p. 5), its own rows: relative position bias x pretraining length, as
overrides of configs/maskdistill_b16_clip_b16.py (CLIP-B/16 teacher, 40% block masks).

Rows in the paper's order:
  ViT-B/16, 300 epochs, no relative position bias                        84.9
  ViT-B/16, 300 epochs, relative position bias (the config's default)    85.0
  ViT-B/16, 800 epochs, relative position bias                           85.5
  ViT-L/16, 300 epochs, relative position bias                           86.8
  ViT-L/16, 800 epochs, relative position bias                           87.1
The "no relative position" row needs some position information: the paper does not say which;
here an absolute learned embedding (BEiT's abs_pos_emb option), carried into its fine-tune. L
rows: the config's L settings (drop path 0.2, layer scale 1e-5; Table 11). Each row is then
fine-tuned with MaskDistill's Table 13 recipe at its size (configs/finetune.py). The table's
other rows are other methods (BEiT, MAE, CAE, SdAE, SIM, MaskFeat, PeCo, data2vec, CLIP, MVP,
BEiT v2, MILAN) and its ADE20k column is not a run of this codebase.
"""
from typing import Any

from configs.sweeps.maskdistill_vs_kd import B16, L16

CONFIG = "configs/maskdistill_b16_clip_b16.py"
METRIC = "ImageNet-1k fine-tune top-1 (%)"
EVALUATION = "finetune"
RECIPE = "maskdistill"  # configs/finetune.py
_ABS = {"student.rel_pos": "none", "student.posemb": "learned"}
_REL = {"student.rel_pos": "shared", "student.posemb": "none"}
ROWS = [
    ({**B16, **_ABS, "total_epochs": 300.0}, 84.9),
    ({**B16, **_REL, "total_epochs": 300.0}, 85.0),
    ({**B16, **_REL, "total_epochs": 800.0}, 85.5),
    ({**L16, **_REL, "total_epochs": 300.0}, 86.8),
    ({**L16, **_REL, "total_epochs": 800.0}, 87.1),
]


def sweep() -> list[dict[str, Any]]:
  return [point for point, _ in ROWS]


def paper() -> list[float]:
  return [number for _, number in ROWS]
