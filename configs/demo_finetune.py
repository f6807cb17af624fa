r"""The demo's fine-tune on the digits as a config file (`configs/demo.py:get_finetune_config`):
MaskAlign's fine-tune recipe at the demo's size, a fixed step budget, no mixup / cutmix /
RandAugment. A sweep's evaluation run names it (configs/sweeps/demo_top_k.py), and so can a
command line:

  python -m mim_jax.main --config configs/demo_finetune.py --config.init_from=runs/demo \
      --workdir runs/demo/finetune

Arguments: steps=300 (the fine-tune's steps), runlocal=True (4 steps, the runlocal demo's size).
"""
from configs import demo


def get_config(arg=None):
  return demo.get_finetune_config(arg)
