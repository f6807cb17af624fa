"""MR-MAE's Figure 4: high-level targets, as overrides of configs/mrmae_b16_clip_b16.py (ViT-B/16
student, 200 epochs, focused mimicking and multi-layer fusion: the setting whose CLIP row is
Table 3's 85.0). The paper captions this teacher ablation Figure 4 (its text says "Table 4";
its Table 4 is the model-scale table, see mrmae_tricks.py).

Rows in the paper's order:
  DINO-B/16                                                              84.0
  CLIP-B/16                                                              85.0
  CLIP/DINO (Joint): one student, one mimic head per teacher, the two
  mimic terms summed (mim_jax/objectives/mrmae.py); focused masks from
  CLIP's attention (`teacher.attention_from=0`, the first listed)         83.8
The paper gives no weights or formula for the joint row (nor which teacher's attention picks the
focused tokens): both teachers at weight 1, the first one's attention, as the objective's
docstring says.
The row it cannot express as one run: "CLIP/DINO (Sep.)" (85.5, 176M parameters) is two models,
the CLIP and the DINO rows each pretrained and fine-tuned on their own, ensembled at test time.
To reproduce it, take the two rows' fine-tunes (`<sweep workdir>/spec=clip_b16/finetune` and
`.../spec=dino_b16/finetune`, which --run makes), export each
classifier (`python -m mim_jax.export --format hf`) and average the two models' class
probabilities over the validation set (the paper does not say how it ensembles; this codebase
has no ensemble evaluation).
"""
from typing import Any

CONFIG = "configs/mrmae_b16_clip_b16.py"
METRIC = "ImageNet-1k fine-tune top-1 (%)"
EVALUATION = "finetune"
RECIPE = "mrmae"  # configs/finetune.py
ROWS = [
    ({"teacher.spec": "dino_b16"}, 84.0),
    ({"teacher.spec": "clip_b16"}, 85.0),
    ({"teacher.spec": "clip_b16,dino_b16"}, 83.8),  # run name: spec=clip_b16_dino_b16
]


def sweep() -> list[dict[str, Any]]:
  return [point for point, _ in ROWS]


def paper() -> list[float]:
  return [number for _, number in ROWS]
