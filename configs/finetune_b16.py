r"""Fine-tuning ViT-B/16 on ImageNet-1k: the MAE / MaskAlign recipe (METHODS.md, Evaluation).

  python -m mim_jax.main --config configs/finetune_b16.py:recipe=maskalign \
      --config.init_from=runs/maskalign --workdir runs/maskalign_ft
  python -m mim_jax.main --config configs/finetune_b16.py:runlocal=True --workdir /tmp/ft_local

100 epochs, AdamW(0.9, 0.999), wd 0.05, blr 3e-4 (MaskAlign) / 5e-4 (MAE) with lr = blr *
batch / 256, warmup 5 epochs, layer-wise lr decay 0.65, drop path 0.2, label smoothing 0.1,
mixup 0.8 / cutmix 1.0 (switch prob 0.5), global average pooling with fc_norm.

Arguments: variant=B/16, recipe=maskalign|mae (sets blr), runlocal=True (nano on digits).

`init_from`: the pretraining workdir (or workdir:step) whose student initialises
params["student"] (mim_jax/init_from.py).

TODO (not applied yet, recorded so that a run says what it lacks): the input pipeline's
RandAugment m9-mstd0.5 and random erasing 0.25 (`augment`).
"""
import ml_collections

from configs import common
from mim_jax import config as config_lib

BASE_LR = {"maskalign": 3e-4, "mae": 5e-4}


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, runlocal=False, variant="B/16", recipe="maskalign")
  if arg.recipe not in BASE_LR:
    raise ValueError(f"Unknown recipe {arg.recipe!r}; known: {sorted(BASE_LR)}.")
  c = common.base("classify")
  c.student.variant = arg.variant
  c.student.drop_path = 0.2
  c.teacher.spec = None
  c.mask.kind, c.mask.ratio = "none", 0.0
  c.objective.num_classes = 1000
  c.objective.pool = "avg"
  c.objective.label_smoothing = 0.1
  c.objective.mixup, c.objective.cutmix = 0.8, 1.0

  c.data.split, c.data.eval_split = "train", "validation"
  c.data.crop_scale = (0.08, 1.0)

  c.batch_size = 1024
  c.total_epochs = 100.0
  c.warmup_percent = None
  c.warmup_epochs = 5.0
  c.optim.base_lr, c.optim.min_lr = BASE_LR[arg.recipe], 1e-6
  c.optim.b1, c.optim.b2, c.optim.weight_decay = 0.9, 0.999, 0.05
  c.optim.layer_decay = 0.65

  c.init_from = ml_collections.FieldReference(None, field_type=str)  # see docstring
  c.augment = ml_collections.ConfigDict(dict(randaugment="rand-m9-mstd0.5-inc1",
                                             random_erasing=0.25))  # TODO: see docstring
  c.eval.every = 6_250  # top-1 / top-5 on data.eval_split (~5 epochs at batch 1024) and at the end
  if arg.runlocal:
    common.shrink_for_local(c)
    c.objective.num_classes = 10
    c.eval.every = c.total_steps  # results.json at the end
  return c
