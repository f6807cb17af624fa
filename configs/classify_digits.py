r"""Supervised ViT-micro/4 on the digits demo dataset: the demo's own teacher.

  python -m mim_jax.main --config configs/classify_digits.py --workdir runs/digits_teacher
  python -m mim_jax.main --config configs/classify_digits.py:runlocal=True \
      --workdir /tmp/digits_local

Then export it for distillation (it reaches the teacher loader like a real DINO checkpoint):
  mim_jax.export.export_hf(params["student"], student, out_dir)  # -> teachers.load(out_dir)

Arguments: variant=micro/4 (student size at 32x32), steps=300, pool=cls (the CLS token carries
the class, so the teacher's last-layer CLS attention is meaningful for attentive masking),
runlocal=True (nano/4 at 16x16, a few steps).
"""
from mim_jax import defaults
from mim_jax import config as config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, runlocal=False, variant="micro/4", steps=300, pool="cls")
  c = defaults.base("classify")
  c.student.variant = arg.variant
  c.student.drop_path = 0.1
  c.objective.num_classes = 10
  c.objective.pool = arg.pool
  c.objective.label_smoothing = 0.1

  # Crops above 60% of the area: smaller ones would cut digits in half.
  defaults.digits_data(c, image_size=32, crop_scale=(0.6, 1.0))

  c.batch_size = 64
  c.total_epochs = None
  c.total_steps = arg.steps
  c.warmup_percent = 0.1
  # From scratch on 1.5k images: a fixed lr (no batch scaling), AdamW(0.9, 0.999).
  c.optim.lr, c.optim.base_lr, c.optim.min_lr = 1e-3, None, 1e-5
  c.optim.b1, c.optim.b2, c.optim.weight_decay = 0.9, 0.999, 0.05
  c.log_every = 20
  c.checkpoint_every = 100
  if arg.runlocal:
    defaults.shrink_for_local(c)
  return c
