"""MaskDistill's Figure 2: block-wise against random masks at several ratios, as overrides of
configs/maskdistill_b16_clip_b16.py (CLIP-B/16 teacher, 300 epochs).

Rows: block masks at 20, 40, 60 and 80%, then random masks at the same ratios. The paper gives
these only as curves in a figure (ticks at 0.2-0.8; its exact ratios and values are not printed),
so no row has a paper number except the default (block 40%), whose 85.0 is Table 9's / 10's
CLIP row. The figure's linear-probe panel is maskdistill_mask_type_probe.py; its ADE20k panel
is not a run of this codebase.
"""
from typing import Any, Optional

CONFIG = "configs/maskdistill_b16_clip_b16.py"
METRIC = "ImageNet-1k fine-tune top-1 (%)"
EVALUATION = "finetune"
RECIPE = "maskdistill"  # configs/finetune.py
RATIOS = (0.2, 0.4, 0.6, 0.8)


def sweep() -> list[dict[str, Any]]:
  return [{"mask.kind": kind, "mask.ratio": r} for kind in ("block", "random") for r in RATIOS]


def paper() -> list[Optional[float]]:
  return [85.0 if (p["mask.kind"], p["mask.ratio"]) == ("block", 0.4) else None
          for p in sweep()]
