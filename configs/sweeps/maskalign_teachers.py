"""MaskAlign's Table 5: teacher models, as overrides of configs/maskalign_b16_clip_b16.py.

Rows in the paper's order: ViT-B/16 students of DINO-B/16, CLIP-B/16 and CLIP-L/14 (its input
resized to 196 px so that its 14 x 14 grid matches the student's; `teacher.resize_to_student`),
then ViT-L/16 students (drop path 0.2, as the config gives L) of CLIP-B/16 and CLIP-L/14. Top-5
Dynamic Alignment, 70% attentive masking, 200 epochs; the [CLS] token is not aligned (the paper's
setting for Tables 3-5). Every row is expressible; the teachers' own fine-tune accuracies (the
T-FT column) are not runs of this codebase.
"""
from typing import Any

CONFIG = "configs/maskalign_b16_clip_b16.py"
METRIC = "ImageNet-1k fine-tune top-1 (%)"
EVALUATION = "finetune"
RECIPE = "maskalign"  # configs/finetune.py
_CLS = {"objective.align_cls": False}
_L = {"student.variant": "L/16", "student.drop_path": 0.2}
ROWS = [
    ({"student.variant": "B/16", "teacher.spec": "dino_b16", **_CLS}, 83.9),
    ({"student.variant": "B/16", "teacher.spec": "clip_b16", **_CLS}, 85.3),
    ({"student.variant": "B/16", "teacher.spec": "clip_l14", **_CLS}, 85.6),
    ({**_L, "teacher.spec": "clip_b16", **_CLS}, 86.5),
    ({**_L, "teacher.spec": "clip_l14", **_CLS}, 87.4),
]


def sweep() -> list[dict[str, Any]]:
  return [point for point, _ in ROWS]


def paper() -> list[float]:
  return [number for _, number in ROWS]
