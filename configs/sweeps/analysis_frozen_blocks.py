"""The masked-distillation analysis paper's Figure 8c (Section 4, "representation folding"):
ImageNet-1k top-1 of CLIP ViT-B/16 fine-tuned with its first k transformer blocks frozen,
k = 0 .. 12, as overrides of configs/finetune_clip.py (its Appendix D, Table 1, column
CLIP/ViT-B/16; EVALUATION "run": each row is one fine-tune of the CLIP tower).

"The numbers 1 to 11 indicate the number of frozen transformer blocks, organized in an ascending
hierarchical order from lower to higher layers. Number 12 denotes the linear probe." Rows:
k = 0 freezes the patch projection only (the appendix's recipe: the 84.8 baseline of Section 4);
k >= 1 freezes, through `optim.frozen` patterns, the embedding below the first block (patch
projection, CLS token, position embedding, CLIP's pre-LayerNorm) and blocks 0 .. k-1 with their
relative position tables; k = 12 freezes every block, which leaves the pooled feature's
LayerNorm and the linear head to train: the figure's "linear probe" point, but with the
fine-tune recipe's head rather than MAE's probe protocol (BatchNorm, LARS; configs/linear_probe.py,
another config). The figure's values are drawn, not printed: only k = 0 has the paper's number.
"""
from typing import Any, Optional

CONFIG = "configs/finetune_clip.py"
METRIC = "ImageNet-1k fine-tune top-1 (%) of CLIP ViT-B/16"
EVALUATION = "run"
DEPTH = 12
_EMBEDDING = "student/(patch_embed|cls|pos_embedding|pre_norm)"


def frozen(k: int) -> tuple[str, ...]:
  """`optim.frozen` with the first k blocks frozen (k = 0: the recipe's patch projection)."""
  if k == 0:
    return ("student/patch_embed",)
  blocks = "|".join(str(i) for i in range(k))
  return (_EMBEDDING, f"student/(block|rel_pos_bias_)({blocks})")


def sweep() -> list[dict[str, Any]]:
  return [{"optim.frozen": frozen(k)} for k in range(DEPTH + 1)]


def names() -> list[str]:
  return [f"frozen_blocks={k}" for k in range(DEPTH + 1)]


def paper() -> list[Optional[float]]:
  return [84.8] + [None] * DEPTH
