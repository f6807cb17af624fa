"""The masked-distillation analysis paper's Figure 8b (Section 4, "Sharpness"): ImageNet-1k top-1
against the fine-tuning learning rate, for CLIP ViT-B/16 fine-tuned directly (the CLIP curve),
as overrides of configs/finetune_clip.py (its Appendix D, Table 1, column CLIP/ViT-B/16).

Each row is one fine-tune of the CLIP tower (EVALUATION "run": no pretraining), at a peak lr
(`optim.lr`, absolute, batch 1024). The figure's lr grid is drawn, not printed; the text gives
one point: "the original CLIP model, after properly reducing the learning rate, demonstrates a
higher fine-tuning accuracy: 84.8% as opposed to 82.9%" (the latter FD's fine-tune), at the
appendix's 5e-5. This file takes a factor-of-2 grid around it, the paper's number beside 5e-5.

The figure's other curves are the same fine-tunes of other starting points: its Masked
Distillation student of CLIP is this sweep with the MaskDistill fine-tune config and the
student's workdir,
  python launch/sweep.py --sweep configs/sweeps/analysis_lr.py --workdir runs/lr_md \\
      --config configs/finetune.py:recipe=maskdistill --run \\
      -- --config.init_from=<a maskdistill_b16_clip_b16 workdir>
(the rows set only `optim.lr`, a field of both configs).
"""
from typing import Any, Optional

CONFIG = "configs/finetune_clip.py"
METRIC = "ImageNet-1k fine-tune top-1 (%) of CLIP ViT-B/16"
EVALUATION = "run"
ROWS = [(1.25e-5, None), (2.5e-5, None), (5e-5, 84.8), (1e-4, None), (2e-4, None),
        (4e-4, None)]


def sweep() -> list[dict[str, Any]]:
  return [{"optim.lr": lr} for lr, _ in ROWS]


def paper() -> list[Optional[float]]:
  return [number for _, number in ROWS]
