"""MaskDistill's Table 9: teacher x loss function x target normalisation, as overrides of
configs/maskdistill_b16_clip_b16.py (300 epochs).

Rows in the paper's order: DINO-B/16 teacher with MSE on raw features, cosine (the l2 norm is
what the paper lists; cosine is invariant to it) and smooth-L1 on LayerNorm-ed features; then the
CLIP-B/16 teacher with MSE, cosine, smooth-L1 on BatchNorm-ed features and smooth-L1 on
LayerNorm-ed features (the default). The paper's numbers: ImageNet-1k fine-tune top-1 (its
ADE20k mIoU column is not a run of this codebase). Every row is expressible.
"""
from typing import Any

CONFIG = "configs/maskdistill_b16_clip_b16.py"
METRIC = "ImageNet-1k fine-tune top-1 (%)"
EVALUATION = "finetune"
RECIPE = "maskdistill"  # configs/finetune.py
# (teacher, target norm, loss, the paper's fine-tune top-1)
TABLE = [("dino_b16", "none", "mse", 84.3), ("dino_b16", "l2", "cosine", 84.5),
         ("dino_b16", "ln", "smooth_l1", 84.5),
         ("clip_b16", "none", "mse", 84.6), ("clip_b16", "l2", "cosine", 84.9),
         ("clip_b16", "bn", "smooth_l1", 84.9), ("clip_b16", "ln", "smooth_l1", 85.0)]


def sweep() -> list[dict[str, Any]]:
  return [{"teacher.spec": t, "objective.target_norm": n, "objective.loss": loss}
          for t, n, loss, _ in TABLE]


def paper() -> list[float]:
  return [number for *_, number in TABLE]
