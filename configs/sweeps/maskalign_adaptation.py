"""MaskAlign's Table 6: adaptor, target normalisation and [CLS] alignment, as overrides of
configs/maskalign_b16_clip_b16.py.

Rows in the paper's order: Linear/LN/with CLS, Linear/LN/without, MLP (hidden width = the
student's)/LN/without, Linear/BN/without, Linear/none/without. Top-5 Dynamic Alignment, 70%
attentive masking, CLIP-B/16, 200 epochs. BN is the public code's: the whole target tensor
standardised by its global mean and variance, no affine. Every row is expressible.
"""
from typing import Any

CONFIG = "configs/maskalign_b16_clip_b16.py"
METRIC = "ImageNet-1k fine-tune top-1 (%)"
EVALUATION = "finetune"
RECIPE = "maskalign"  # configs/finetune.py
# (adaptor, target norm, align [CLS], the paper's fine-tune top-1)
TABLE = [("linear", "ln", True, 85.4), ("linear", "ln", False, 85.3), ("mlp", "ln", False, 85.2),
         ("linear", "bn", False, 84.7), ("linear", "none", False, 84.3)]


def sweep() -> list[dict[str, Any]]:
  return [{"objective.adaptor": a, "objective.target_norm": n, "objective.align_cls": c}
          for a, n, c, _ in TABLE]


def paper() -> list[float]:
  return [number for *_, number in TABLE]
