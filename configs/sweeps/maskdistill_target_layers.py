"""MaskDistill's Table 10: which teacher features are the target, as overrides of
configs/maskdistill_b16_clip_b16.py (300 epochs).

Rows in the paper's order: DINO-B/16 then CLIP-B/16 teachers, each with the last block's output,
the mean of the last 3 and the mean of the last 6 block outputs (averaged raw, then LayerNorm-ed
once). The paper's numbers: ImageNet-1k fine-tune top-1 (its ADE20k mIoU column is not a run of
this codebase). Every row is expressible.
"""
from typing import Any

CONFIG = "configs/maskdistill_b16_clip_b16.py"
METRIC = "ImageNet-1k fine-tune top-1 (%)"
EVALUATION = "finetune"
RECIPE = "maskdistill"  # configs/finetune.py
TABLE = [("dino_b16", "last", 84.5), ("dino_b16", "last3", 84.4), ("dino_b16", "last6", 84.3),
         ("clip_b16", "last", 85.0), ("clip_b16", "last3", 85.0), ("clip_b16", "last6", 85.1)]


def sweep() -> list[dict[str, Any]]:
  return [{"teacher.spec": t, "objective.target_layers": layers} for t, layers, _ in TABLE]


def paper() -> list[float]:
  return [number for *_, number in TABLE]
