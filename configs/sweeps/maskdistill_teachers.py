"""MaskDistill's Table 8 (p. 9), the rows whose teachers this codebase loads: a ViT-B/16 student,
300 epochs, as overrides of configs/maskdistill_b16_clip_b16.py.

  #6 CLIP ViT-B/16 (OpenAI's official checkpoint, private 400M pairs)   85.0
  #9 DINO ViT-B/16 (official checkpoint, ImageNet-1k)                    84.5
The other rows cannot be run here: #1-#5 and #8 are SLIP's CLIP / SLIP / SimCLR ViT-B models
trained on YFCC15M, CC3M and CC12M, released only in SLIP's own checkpoint format (the teachers
load transformers ViTModel and CLIP checkpoints); #7 is a ResNet-50 (the teachers are ViTs); #10
MAE, #11 BEiT and #12 BEiT v2 are not teachers this codebase loads (MAE's ViTMAEModel and BEiT's
checkpoints are read by init_from as students, not by the teacher loader). The teacher's own
accuracy column is not a run of this codebase; the ADE20k column neither.
"""
from typing import Any

CONFIG = "configs/maskdistill_b16_clip_b16.py"
METRIC = "ImageNet-1k fine-tune top-1 (%)"
EVALUATION = "finetune"
RECIPE = "maskdistill"  # configs/finetune.py
ROWS = [({"teacher.spec": "clip_b16"}, 85.0), ({"teacher.spec": "dino_b16"}, 84.5)]


def sweep() -> list[dict[str, Any]]:
  return [point for point, _ in ROWS]


def paper() -> list[float]:
  return [number for _, number in ROWS]
