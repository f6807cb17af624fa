r"""The demo, the embedded default: MaskAlign on the digits dataset on a laptop CPU.

A micro ViT student (64 wide, 4 blocks, patch 4 at 32x32: an 8x8 grid) is pretrained with
MaskAlign from the demo's own teacher, a micro ViT trained supervised on the same digits
(`configs/classify_digits.py`) and exported in the transformers ViTModel format, so it reaches
the distillation through the same loader as a real DINO checkpoint.

  bash launch/local.sh demo                       # set-up, teacher, pretraining, table, plots
  python -m mim_jax.main --config configs/demo.py --workdir runs/demo   # the pretraining only

runlocal=True: a few steps, for tests.

`get_finetune_config`: the demo's fine-tune of its student on the same digits (MaskAlign's
fine-tune recipe, `configs/finetune.py`, at the demo's size and a fixed step budget; mixup,
cutmix and RandAugment off on 32x32 digits), run once from the pretrained student and once from
a random init with the same budget.
"""
from mim_jax import defaults
from configs import finetune
from configs import maskalign_b16_clip_b16
from mim_jax import config as config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, runlocal=False, steps=800)
  c = maskalign_b16_clip_b16.get_config("variant=micro/4,teacher=demo")
  c.student.drop_path = 0.0
  c.mask.kind, c.mask.ratio = "attentive", 0.7
  c.objective.top_k = 2  # of the teacher's 4 blocks (the paper: 5 of 12)

  defaults.digits_data(c, image_size=32, crop_scale=(0.5, 1.0))

  c.batch_size = 64
  c.total_epochs = None
  c.total_steps = arg.steps
  c.warmup_percent = 0.05
  # short run: a fixed peak lr, no batch scaling
  c.optim.lr, c.optim.base_lr, c.optim.min_lr = 1e-3, None, 1e-5
  c.log_every = 25
  c.checkpoint_every = 100
  c.eval.batch_size = 256
  if arg.runlocal:
    c.runlocal = True
    c.total_steps = 4
    c.log_every = c.checkpoint_every = 2
  return c


def get_finetune_config(arg=None):
  arg = config_lib.parse_arg(arg, runlocal=False, steps=300)
  pre = get_config("runlocal=True" if arg.runlocal else None)
  c = finetune.get_config("recipe=maskalign")
  c.student = pre.student
  c.student.drop_path = 0.1
  defaults.digits_data(c, image_size=pre.data.image_size, crop_scale=pre.data.crop_scale)
  c.objective.num_classes = 10
  c.objective.mixup = c.objective.cutmix = 0.0
  c.augment.randaugment = ""  # its rotations and inversions change what a digit is
  c.batch_size = pre.batch_size
  c.total_epochs = None
  c.total_steps = 4 if arg.runlocal else arg.steps
  c.warmup_epochs = None
  c.warmup_percent = 0.1
  c.optim.lr, c.optim.base_lr, c.optim.min_lr = 1e-3, None, 1e-5
  c.log_every = 2 if arg.runlocal else 25
  c.checkpoint_every = c.total_steps
  c.eval.every = c.total_steps
  c.eval.batch_size = pre.eval.batch_size
  return c
