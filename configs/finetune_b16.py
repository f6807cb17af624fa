r"""Fine-tuning ViT-B/16 on ImageNet-1k: `configs/finetune.py` at variant B/16 (the same
arguments: recipe=maskalign|maskdistill|mrmae|mae|mae_robust|fd, runlocal=True).

  python -m mim_jax.main --config configs/finetune_b16.py:recipe=maskalign \
      --config.init_from=runs/maskalign --workdir runs/maskalign_ft
  python -m mim_jax.main --config configs/finetune_b16.py:runlocal=True --workdir /tmp/ft_local
"""
from configs import finetune


def get_config(arg=None):
  return finetune.get_config(",".join(filter(None, ["variant=B/16", arg])))
