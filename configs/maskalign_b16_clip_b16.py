r"""MaskAlign: ViT-B/16 student, CLIP ViT-B/16 teacher, ImageNet-1k, 200 epochs (paper recipe).

  python -m mim_jax.main --config configs/maskalign_b16_clip_b16.py --workdir runs/maskalign
  python -m mim_jax.main --config configs/maskalign_b16_clip_b16.py:runlocal=True \
      --config.teacher.spec=/path/to/tiny_teacher --workdir /tmp/maskalign_local

Arguments: variant=B/16 (student size), teacher=clip_b16 (zoo name or checkpoint dir),
runlocal=True (nano student on the digits dataset, the demo's own teacher).

Weight decay: AdamW decays the kernels only (mim_jax/optim.py), not the CLS token, biases, norms
or the alignment matrix. The public code (timm's add_weight_decay, which exempts only 1-D
parameters) also decays `cls_token` [1, 1, D]. We keep the ViT convention (timm / BEiT
`no_weight_decay`: pos_embed, cls_token) shared by every method here, so that the tables' rows
differ only in what they ablate; it touches D of ~86M parameters.
"""
from mim_jax import defaults
from mim_jax import config as config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, runlocal=False, variant="B/16", teacher="clip_b16")
  c = defaults.base("maskalign")
  c.student.variant = arg.variant
  c.student.drop_path = 0.2 if arg.variant.startswith("L") else 0.1
  c.teacher.spec = arg.teacher
  c.mask.kind, c.mask.ratio = "attentive", 0.7
  c.objective.top_k = 5
  c.batch_size = 1024
  c.total_epochs = 200.0
  c.warmup_percent = 0.1  # 20 of 200 epochs
  c.optim.base_lr, c.optim.min_lr = 1.5e-4, 1e-5
  c.optim.b1, c.optim.b2, c.optim.weight_decay = 0.9, 0.95, 0.05
  c.data.crop_scale = (0.2, 1.0)
  if arg.runlocal:
    defaults.shrink_for_local(c)
    c.objective.top_k = 2
  return c
