"""MaskAlign's Table 3: alignment type x top-K teacher layers, as overrides of
configs/maskalign_b16_clip_b16.py.

Rows in the paper's order (fine-tune top-1 in the comments): Dynamic Alignment with K = 1, 3, 5, 7,
then layer-wise alignment with K = 1 and 5. All at 70% attentive masking, 200 epochs, CLIP-B/16,
and without aligning the [CLS] token (the paper's setting for Tables 3-5). The paper's table has
no "mean" row; K = 1 is the "out" weighting (last teacher layer only).
"""
from typing import Any


def sweep() -> list[dict[str, Any]]:
  cls = {"objective.align_cls": False}
  return [
      {"objective.alignment": "dynamic", "objective.top_k": 1, **cls},    # 84.9
      {"objective.alignment": "dynamic", "objective.top_k": 3, **cls},    # 85.1
      {"objective.alignment": "dynamic", "objective.top_k": 5, **cls},    # 85.3
      {"objective.alignment": "dynamic", "objective.top_k": 7, **cls},    # 85.1
      {"objective.alignment": "layerwise", "objective.top_k": 1, **cls},  # 84.8
      {"objective.alignment": "layerwise", "objective.top_k": 5, **cls},  # 85.1
  ]
