r"""MaskDistill: ViT-B/16 student, CLIP ViT-B/16 teacher, ImageNet-1k, 300 epochs (paper recipe).

  python -m mim_jax.main --config configs/maskdistill_b16_clip_b16.py --workdir runs/maskdistill
  python -m mim_jax.main --config configs/maskdistill_b16_clip_b16.py:runlocal=True --workdir /tmp/x

Arguments: variant=B/16 (student size; L and H get their layer scale and drop path),
teacher=clip_b16 (zoo name or checkpoint dir), runlocal=True (nano student on the digits dataset,
the demo's own teacher).

Recipe (appendix, Table 11): batch 2048, peak lr 1.5e-3 = base_lr 1.875e-4 * 2048 / 256 (set as
base_lr so that another batch size scales it), AdamW(0.9, 0.999) eps 1e-8, wd 0.05, cosine to
1e-5 after 10 warmup epochs, grad clip 3.0, drop path 0.1 / 0.2 / 0.25 and layer scale 0.1 /
1e-5 / 1e-5 (B / L / H), color jitter 0.4, block masks 40%. Student: dense inpainting input,
shared relative position bias, no absolute position embedding, BEiT init. The crop scale is not
in the paper: RandomResizedCrop scale (0.2, 1), as BEiT v2's published pretraining command
(--min_crop_scale 0.2) and the masked-distillation study's MaskDistill recipe (its appendix
table: min crop scale 0.2).
"""
from mim_jax import defaults
from mim_jax import config as config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, runlocal=False, variant="B/16", teacher="clip_b16")
  size = arg.variant.split("/")[0]
  c = defaults.base("maskdistill")
  c.student.variant = arg.variant
  c.student.drop_path = {"L": 0.2, "H": 0.25}.get(size, 0.1)
  c.student.posemb = "none"
  c.student.rel_pos = "shared"
  c.student.layer_scale = 1e-5 if size in ("L", "H") else 0.1
  c.student.weight_init = "beit"
  c.teacher.spec = arg.teacher
  c.mask.kind, c.mask.ratio = "block", 0.4
  c.objective.target_layers = "last"
  c.objective.target_norm = "ln"
  c.objective.loss = "smooth_l1"
  c.objective.loss_on = "masked"
  c.batch_size = 2048
  c.total_epochs = 300.0
  c.warmup_percent = None
  c.warmup_epochs = 10.0
  c.optim.base_lr, c.optim.min_lr = 1.5e-3 * 256 / 2048, 1e-5
  c.optim.b1, c.optim.b2, c.optim.eps, c.optim.weight_decay = 0.9, 0.999, 1e-8, 0.05
  c.optim.clip_norm = 3.0
  c.data.crop_scale = (0.2, 1.0)
  c.data.color_jitter = 0.4
  if arg.runlocal:
    defaults.shrink_for_local(c)
    # the paper's peak: base_lr * 16 / 256 would sit below min_lr
    c.optim.lr, c.optim.base_lr = 1.5e-3, None
  return c
