"""MaskDistill's Table 9: loss function x target normalisation, as config overrides.

Each entry overrides `configs/maskdistill_b16_clip_b16.py`; the paper's rows, in its order:
MSE on raw features, cosine (invariant to scale: the l2 norm is what the paper lists), smooth-L1
on BatchNorm-ed features, smooth-L1 on LayerNorm-ed features (the default).
"""
from typing import Any


def sweep() -> list[dict[str, Any]]:
  return [
      {"objective.target_norm": "none", "objective.loss": "mse"},
      {"objective.target_norm": "l2", "objective.loss": "cosine"},
      {"objective.target_norm": "bn", "objective.loss": "smooth_l1"},
      {"objective.target_norm": "ln", "objective.loss": "smooth_l1"},
  ]
