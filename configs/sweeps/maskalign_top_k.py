"""MaskAlign's Table 3: alignment type x top-K teacher layers, as overrides of
configs/maskalign_b16_clip_b16.py.

Rows in the paper's order: Dynamic Alignment with K = 1, 3, 5, 7, then layer-wise alignment with
K = 1 and 5. All at 70% attentive masking, 200 epochs, CLIP-B/16, and without aligning the [CLS]
token (the paper's setting for Tables 3-5). K = 1 is the "out" weighting (last teacher layer
only). Every row is expressible.
"""
from typing import Any

CONFIG = "configs/maskalign_b16_clip_b16.py"
METRIC = "ImageNet-1k fine-tune top-1 (%)"
EVALUATION = "finetune"
RECIPE = "maskalign"  # configs/finetune.py
_CLS = {"objective.align_cls": False}
ROWS = [
    ({"objective.alignment": "dynamic", "objective.top_k": 1, **_CLS}, 84.9),
    ({"objective.alignment": "dynamic", "objective.top_k": 3, **_CLS}, 85.1),
    ({"objective.alignment": "dynamic", "objective.top_k": 5, **_CLS}, 85.3),
    ({"objective.alignment": "dynamic", "objective.top_k": 7, **_CLS}, 85.1),
    ({"objective.alignment": "layerwise", "objective.top_k": 1, **_CLS}, 84.8),
    ({"objective.alignment": "layerwise", "objective.top_k": 5, **_CLS}, 85.1),
]


def sweep() -> list[dict[str, Any]]:
  return [point for point, _ in ROWS]


def paper() -> list[float]:
  return [number for _, number in ROWS]
