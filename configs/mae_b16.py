r"""MAE: ViT-B/16 pixel reconstruction of 75% randomly masked patches, no teacher, ImageNet-1k.

  python -m mim_jax.main --config configs/mae_b16.py --workdir runs/mae_b16
  python -m mim_jax.main --config configs/mae_b16.py:runlocal=True --workdir /tmp/x

800 epochs: the length robust MAE and most ablations compare at (MAE's paper also reports
1600: add --config.total_epochs=1600). Recipe of MAE's pretraining: batch 4096, AdamW(0.9, 0.95),
base lr 1.5e-4 (lr = base * batch / 256 = 2.4e-3), weight decay 0.05, 40 warmup epochs, cosine
to 0, no drop path, RandomResizedCrop(224, scale 0.2-1) + flip; decoder 512 x 8 blocks, 16 heads;
target: per-patch normalised pixels of the ImageNet-normalised crop (global_norm="global_rgb"
with ImageNet statistics, exactly MAE's public code; see mim_jax/objectives/mae.py).

Arguments: variant=B/16 (student size), runlocal=True (nano student, tiny decoder, digits).
"""
from mim_jax import defaults
from mim_jax import config as config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, runlocal=False, variant="B/16")
  c = defaults.base("mae")
  c.student.variant = arg.variant
  c.student.drop_path = 0.0
  c.mask.kind, c.mask.ratio = "random", 0.75
  c.objective.norm_pix = True
  c.objective.global_norm = "global_rgb"
  c.objective.decoder.width, c.objective.decoder.depth = 512, 8
  c.objective.decoder.heads, c.objective.decoder.mlp_dim = 16, 2048
  c.objective.decoder.attn_drop = 0.0
  c.batch_size = 4096
  c.total_epochs = 800.0
  c.warmup_percent = None
  c.warmup_epochs = 40.0
  c.optim.base_lr, c.optim.min_lr = 1.5e-4, 0.0
  c.optim.b1, c.optim.b2, c.optim.weight_decay = 0.9, 0.95, 0.05
  c.data.crop_scale = (0.2, 1.0)
  if arg.runlocal:
    defaults.shrink_for_local(c)
  return c
