"""MaskDistill's Figure 2(b): the linear-probe panel of the block-wise against random masks
ablation, the same pretraining rows as maskdistill_mask_type.py (its fine-tune panel, 2(a)),
each then probed (configs/linear_probe.py, MaskDistill's student; MAE's protocol: the paper
gives no probe recipe).

The figure draws curves only (ticks at 0.2-0.8): the paper prints no number for this panel.
"""
from typing import Any

from configs.sweeps import maskdistill_mask_type as _figure

CONFIG = _figure.CONFIG
METRIC = "ImageNet-1k linear probe top-1 (%)"
EVALUATION = "probe"
RECIPE = "maskdistill"  # configs/linear_probe.py


def sweep() -> list[dict[str, Any]]:
  return _figure.sweep()
