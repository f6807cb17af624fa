"""The pixel statistics and the evaluation crop, defined once (no TensorFlow, no JAX).

Every image the student sees is normalised with ImageNet's mean/std on pixels in [0, 1]
(`preprocess`); teachers receive the same images and re-normalise them to their own statistics
(`teachers.Teacher.preprocess`); an export writes them into the torch model's preprocessing;
`init_from` folds CLIP's into the patch embedding of a CLIP-initialised student.
"""
from __future__ import annotations

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# OpenAI CLIP's pixel statistics (its preprocessor_config.json; the default of a CLIP teacher
# whose checkpoint has none).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# The student's input normalisation: ImageNet's (the statistics the CLIP/DINO teachers and the
# MIM papers use).
STUDENT_MEAN = IMAGENET_MEAN
STUDENT_STD = IMAGENET_STD

# The evaluation centre crop: the shorter side is resized to image_size / CROP_PCT, then the
# central image_size square is kept (`data.crop_pct`'s default).
CROP_PCT = 0.875


def eval_resize(image_size: int, crop_pct: float = CROP_PCT) -> int:
  """The shorter side before the centre crop of the evaluation (`preprocess.eval_op`)."""
  return int(round(image_size / crop_pct))
