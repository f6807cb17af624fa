"""MR-MAE's Table 3: mimic before reconstruct and its bag of tricks, as overrides of
configs/mrmae_b16_clip_b16.py (ViT-B/16, CLIP-B/16 teacher, 200 epochs).

Rows that the code expresses, in the paper's order:
  L_R only (MAE: random masks, no mimic loss, no fusion)                83.0
  L_R + L_M (random visible tokens, no fusion)                          84.7
  + focused mimicking                                                   84.9
  + multi-layer fusion (the config's default)                           85.0
  L_M only, focused + fusion (no reconstruction loss)                   84.9
  + masked convolution stages (MR-MCMAE: the ConvMAE hybrid ConvB/16 with
    its pretraining stage skips, configs/mrmcmae_b16_clip_b16.py at 200 epochs) 85.5
The last row is also Table 4's MR-MCMAE Base (85.5 at 200 epochs); its Small, Large and Huge
(83.6, 86.8, 88.0) are not expressible: ConvMAE's public code defines the base hybrid only, and
neither paper gives the other sizes' stage widths and depths.
Row it cannot express: "L_R + L_R" (83.3: the high-level target reconstructed by the decoder on
the masked tokens instead of mimicked by the encoder on the visible ones: there is no decoder
feature head).
Recipe of every row, the MAE row included: MR-MAE's (the config's; Section 4.1, "Experiment
Setups": batch 1024, AdamW with peak lr 1.5e-4, weight decay 0.05, cosine, warmup 80 of 400
epochs = 20%), as the paper's own MAE baseline of this table. The MAE row keeps the teacher
loaded at mimic weight 0 (no effect on the result, only its forward's cost); it is not
configs/mae_b16.py, which is MAE's own recipe (batch 4096, peak lr 2.4e-3, 40 warmup epochs).
The L_M-only row keeps the decoder (weight 0 on its loss, so it gets no gradient). Each row is
then fine-tuned with MR-MAE's recipe (MR-MCMAE's for the ConvB/16 row): configs/finetune.py.
"""
from typing import Any

CONFIG = "configs/mrmae_b16_clip_b16.py"
METRIC = "ImageNet-1k fine-tune top-1 (%)"
EVALUATION = "finetune"  # then configs/finetune.py: `recipe` below
_PLAIN = {"mask.kind": "random", "objective.num_fusion": 1}
ROWS = [
    ({**_PLAIN, "objective.mimic_weight": 0.0, "objective.recon_weight": 1.0}, 83.0),
    ({**_PLAIN, "objective.mimic_weight": 0.5, "objective.recon_weight": 0.5}, 84.7),
    ({"mask.kind": "focused", "objective.num_fusion": 1, "objective.mimic_weight": 0.5,
      "objective.recon_weight": 0.5}, 84.9),
    ({"mask.kind": "focused", "objective.num_fusion": 3, "objective.mimic_weight": 0.5,
      "objective.recon_weight": 0.5}, 85.0),
    ({"mask.kind": "focused", "objective.num_fusion": 3, "objective.mimic_weight": 1.0,
      "objective.recon_weight": 0.0}, 84.9),
    ({"mask.kind": "focused", "objective.num_fusion": 3, "objective.mimic_weight": 0.5,
      "objective.recon_weight": 0.5, "student.variant": "ConvB/16",
      "student.stage_skips": True}, 85.5),
]


def sweep() -> list[dict[str, Any]]:
  return [point for point, _ in ROWS]


def paper() -> list[float]:
  return [number for _, number in ROWS]


def recipe(point: dict[str, Any]) -> str:
  """MR-MAE's fine-tune recipe; MR-MCMAE's (Section 4.1) for the hybrid ConvB/16 rows."""
  return "mrmcmae" if point.get("student.variant", "").startswith("Conv") else "mrmae"
