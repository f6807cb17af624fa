"""MaskAlign's Table 4, literal reading: every row 200 epochs (the number of steps fixed, the
number of visible tokens growing as the ratio falls), as overrides of
configs/maskalign_b16_clip_b16.py. The constant-budget reading is maskalign_mask_ratio.py; the
paper's numbers are the same for both (it reports one table).
"""
from typing import Any

from configs.sweeps import maskalign_mask_ratio as _table

CONFIG = _table.CONFIG
METRIC = _table.METRIC
EVALUATION = _table.EVALUATION
RECIPE = _table.RECIPE


def sweep() -> list[dict[str, Any]]:
  return [dict(point, total_epochs=200.0) for point in _table.sweep()]


def paper() -> list[float]:
  return _table.paper()
