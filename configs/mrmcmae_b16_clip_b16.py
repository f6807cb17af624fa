r"""MR-MCMAE: MR-MAE on the hybrid ConvMAE student (ConvViT-B: masked convolution stages at 1/4
and 1/8, 11 transformer blocks at 1/16) mimicking CLIP ViT-B/16, ImageNet-1k, 400 epochs.

  python -m mim_jax.main --config configs/mrmcmae_b16_clip_b16.py --workdir runs/mrmcmae
  python -m mim_jax.main --config configs/mrmcmae_b16_clip_b16.py:runlocal=True --workdir /tmp/x

The paper's MR-MCMAE base (Table 1: 85.8 top-1 at 400 epochs; Table 3: 85.5 at 200): MR-MAE's
objective (mimic the teacher on the 25% visible tokens + MAE pixel reconstruction of the 75%
masked ones, 0.5 / 0.5, focused mimicking, multi-layer fusion) with MCMAE's masked convolution
stages and multi-scale masking: the 1/16 mask (focused: the teacher's most attended 25%) is
repeated to the 1/8 and 1/4 grids inside the student (mim_jax/models/convvit.py), so no masked
pixel reaches a visible token. The pretraining encoder adds its stage-1/2 outputs to the last
block's (`student.stage_skips`, ConvMAE's pretraining model; fine-tuning drops them).
Fusion: 3 of the 11 transformer blocks, 3, 7 and 11 (indices 2, 6, 10); the paper gives none.
Recipe (paper Section 4.1): batch 1024, AdamW(0.9, 0.95), wd 0.05, peak lr 1.5e-4 (at batch
1024), cosine, 80 warmup epochs of 400, decoder 512 x 8, RandomResizedCrop(224, 0.2-1) + flip,
target as MAE's.

Arguments: variant=ConvB/16 (a hybrid student), teacher=clip_b16 (zoo name or checkpoint dir),
runlocal=True (Convnano student at 64 px (a 4 x 4 grid), tiny decoder, digits, the demo's own
teacher).
"""
from mim_jax import defaults
from configs import mrmae_b16_clip_b16
from mim_jax import config as config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, runlocal=False, variant="ConvB/16", teacher="clip_b16")
  if not config_lib.is_hybrid(arg.variant):
    raise ValueError(f"MR-MCMAE needs a hybrid student (e.g. variant=ConvB/16), got "
                     f"{arg.variant!r}; for a ViT use configs/mrmae_b16_clip_b16.py.")
  c = mrmae_b16_clip_b16.get_config(f"teacher={arg.teacher}")
  c.student.variant = arg.variant
  c.student.stage_skips = True  # ConvMAE's pretraining encoder
  c.total_epochs = 400.0
  c.warmup_percent = None
  c.warmup_epochs = 80.0
  if arg.runlocal:
    defaults.shrink_for_local(c)
    c.student.variant = "Convnano/16"
    c.data.image_size = 64
  return c
