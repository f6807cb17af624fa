r"""Feature Distillation (FD): ViT-B/16 student, CLIP ViT-B/16 teacher, ImageNet-1k, 300 epochs.

  python -m mim_jax.main --config configs/fd_b16_clip_b16.py --workdir runs/fd
  python -m mim_jax.main --config configs/fd_b16_clip_b16.py:runlocal=True --workdir /tmp/x

Arguments: variant=B/16 (student size), teacher=clip_b16 (zoo name or checkpoint dir),
runlocal=True (nano student on the digits dataset, the demo's own teacher).

Recipe (FD paper and its public config): no masking, batch 2048, peak lr 1.2e-3 = base_lr 1.5e-4
* 2048 / 256 (set as base_lr so that another batch size scales it), AdamW(0.9, 0.999) eps 1e-8,
wd 0.05, grad clip 3.0, drop path 0.2, 10 warmup epochs, cosine to 2e-5 (the code's 5e-6 scaled
by 2048 / 512 like its lr), RandomResizedCrop scale (0.08, 1) + flip. Student as FD's code builds
it: shared relative position bias, no absolute position embedding, layer scale 0.1, BEiT init.
"""
from mim_jax import defaults
from mim_jax import config as config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, runlocal=False, variant="B/16", teacher="clip_b16")
  c = defaults.base("fd")
  c.student.variant = arg.variant
  c.student.drop_path = 0.2
  c.student.posemb = "none"
  c.student.rel_pos = "shared"
  c.student.layer_scale = 0.1
  c.student.weight_init = "beit"
  c.teacher.spec = arg.teacher
  c.objective.target_norm = "ln"
  c.objective.loss = "smooth_l1"
  c.objective.beta = 2.0
  c.batch_size = 2048
  c.total_epochs = 300.0
  c.warmup_percent = None
  c.warmup_epochs = 10.0
  c.optim.base_lr, c.optim.min_lr = 1.2e-3 * 256 / 2048, 2e-5
  c.optim.b1, c.optim.b2, c.optim.eps, c.optim.weight_decay = 0.9, 0.999, 1e-8, 0.05
  c.optim.clip_norm = 3.0
  c.data.crop_scale = (0.08, 1.0)
  if arg.runlocal:
    defaults.shrink_for_local(c)
    # the paper's peak: base_lr * 16 / 256 would sit below min_lr
    c.optim.lr, c.optim.base_lr = 1.2e-3, None
  return c
