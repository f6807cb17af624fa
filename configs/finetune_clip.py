r"""Fine-tuning a CLIP ViT-B/16 vision tower itself on ImageNet-1k: the masked-distillation
analysis paper's "better baseline" (its Appendix D, Table 1, column CLIP/ViT-B/16), and the runs
of its Figure 8b (top-1 against the fine-tuning lr) and 8c (top-1 against frozen blocks).

  python -m mim_jax.main --config configs/finetune_clip.py --workdir runs/clip_ft
      [--config.init_from=/path/to/clip-vit-base-patch16]
  python -m mim_jax.main --config configs/finetune_clip.py:runlocal=True \
      --config.init_from=/path/to/tiny_clip --workdir /tmp/clip_ft_local

`init_from` is "clip_b16" (openai/clip-vit-base-patch16 from the local Hugging Face cache, as the
teachers find it) or a transformers CLIP checkpoint directory (CLIPVisionModel,
...WithProjection or a full CLIPModel), read by
mim_jax/init_from.py with the teacher's converter. The student has CLIP's architecture: learned
position embedding, quick_gelu MLP, LayerNorm eps 1e-5, CLIP's pre-LayerNorm; CLIP's pixel
normalisation is folded into the patch embedding, so the student computes CLIP's features on
this pipeline's ImageNet-normalised pixels.

The table's column: 50 epochs, 10 warmup, batch 1024, AdamW(0.9, 0.95), peak lr 5e-5, cosine to
1e-7, layer decay 0.6, weight decay 0.05, no gradient clipping, stochastic depth 0, label
smoothing 0.1, relative position bias (one table per block, not shared: they start at zero),
RandomResizedCrop scale from 0.08, rand-m9-mstd0.5-inc1, random erasing 0.25, no mixup or cutmix,
the patch projection frozen (`optim.frozen`). Its peak lr is read as absolute at batch 1024
(base_lr = 5e-5 / 4), as MaskDistill's Table 13 from the same group. Not in the table, so the
shared recipe's (configs/finetune.py): pooling (average of the patch tokens + fc_norm), the
evaluation cadence. Its color jitter 0.4 is not applied: with RandAugment on, the timm pipeline
the column describes ignores it too.

Arguments: runlocal=True (the nano student at 16 px on the digits, 4 steps: a CLIP tower of the
nano size initialises it in the tests).
"""
from configs import finetune
from mim_jax import config as config_lib

# Appendix D, Table 1, column CLIP/ViT-B/16.
PEAK_LR = 5e-5  # at batch 1024
FREEZE_PATCH_PROJECTION = ("student/patch_embed",)


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, runlocal=False)
  c = finetune.get_config(f"recipe=maskalign,variant=B/16,runlocal={arg.runlocal}")
  c.student.update(posemb="learned", act="quick_gelu", ln_eps=1e-5, pre_norm=True,
                   rel_pos="per_layer", layer_scale=None, weight_init="mae", drop_path=0.0)
  c.objective.mixup = c.objective.cutmix = 0.0
  c.objective.label_smoothing = 0.1
  c.optim.b1, c.optim.b2, c.optim.weight_decay = 0.9, 0.95, 0.05
  c.optim.base_lr, c.optim.min_lr = PEAK_LR * 256 / 1024, 1e-7
  c.optim.layer_decay = 0.6
  c.optim.frozen = FREEZE_PATCH_PROJECTION
  if not arg.runlocal:
    c.total_epochs, c.warmup_epochs = 50.0, 10.0
    c.init_from = "clip_b16"  # openai/clip-vit-base-patch16 from the Hugging Face cache
  return c
