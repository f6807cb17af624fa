r"""Linear probe on ImageNet-1k, MAE's protocol, as a run of `python -m mim_jax.main`.

  python -m mim_jax.main --config configs/linear_probe.py:recipe=maskalign \
      --config.init_from=runs/maskalign --workdir runs/maskalign_lin
  python -m mim_jax.main --config configs/linear_probe.py:runlocal=True \
      --config.init_from=/tmp/mae_local --workdir /tmp/lin_local

Arguments: recipe=maskalign|maskdistill|mrmae|mae|mae_robust|fd (the student its pretraining
config builds, as in configs/finetune.py), variant=B/16|L/16|H/14, runlocal=True.

MAE (paper appendix / main_linprobe.py): the encoder frozen in eval mode, its CLS feature,
BatchNorm without affine, a linear head (trunc_normal 0.01); LARS (momentum 0.9, weight decay 0,
trust ratio on the kernel), base_lr 0.1 with lr = base_lr * batch / 256, batch 16384, 90 epochs
(10 warmup), cosine to 0; augmentation RandomResizedCrop (0.08, 1) + flip only; no label
smoothing, no mixup. MaskAlign's public README uses base_lr 0.025 (its paper gives none); the
other papers give none: MAE's.
"""
import ml_collections

from mim_jax import defaults
from configs import finetune
from mim_jax import config as config_lib
from mim_jax.objectives import linear_probe

BASE_LR = {"maskalign": 0.025}


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, runlocal=False, variant="B/16", recipe="mae")
  if arg.recipe not in finetune.RECIPES:
    raise ValueError(f"Unknown recipe {arg.recipe!r}; known: {', '.join(finetune.RECIPES)}.")
  c = defaults.base("linear_probe")
  c.objective.num_classes = 1000
  c.data.split, c.data.eval_split = "train", "validation"
  c.data.crop_scale = (0.08, 1.0)

  c.batch_size = 16384
  c.total_epochs = 90.0
  c.warmup_percent = None
  c.warmup_epochs = 10.0
  assert c.optim.name == "lars" and c.optim.momentum == 0.9  # the method's default (defaults.py)
  c.optim.base_lr, c.optim.min_lr, c.optim.weight_decay = BASE_LR.get(arg.recipe, 0.1), 0.0, 0.0
  c.optim.frozen = linear_probe.FROZEN

  c.init_from = ml_collections.FieldReference(None, field_type=str)  # mim_jax/init_from.py
  c.eval.every = 780  # ~10 epochs at batch 16384, and the last step
  if arg.runlocal:
    defaults.shrink_for_local(c)
    c.objective.num_classes = 10
    c.optim.base_lr = 20.0  # LARS's trust ratio makes steps tiny on 1.5k digits
    c.eval.every = c.total_steps
  c.student = finetune.pretraining_student(arg.recipe, arg.variant, arg.runlocal, drop_path=0.0)
  return c
