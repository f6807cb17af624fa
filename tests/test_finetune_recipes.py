"""configs/finetune.py: per-paper recipes whose classifier student is the pretraining one."""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from configs import finetune, finetune_b16
from mim_jax import optim
from mim_jax.objectives import common


def student_shapes(config):
  vit = common.make_student(config)
  size = config.data.image_size
  params = jax.eval_shape(lambda: vit.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))
  return {k: v.shape for k, v in traverse_util.flatten_dict(
      jax.tree.map(lambda x: getattr(x, "value", x), params["params"],
                   is_leaf=lambda x: hasattr(x, "value")), sep="/").items()}


@pytest.mark.parametrize("recipe,variant", [
    (r, v) for r in finetune.RECIPES for v in (("ConvB/16",) if r == "mrmcmae" else
                                               ("B/16", "L/16"))])
def test_classifier_student_is_the_pretrained_one(recipe, variant):
  """Every tensor of the fine-tune student exists in the pretraining student with its shape
  (a shared relative position bias becomes one table per block; a hybrid's pretraining-only
  stage skips are dropped), and nothing else differs."""
  ft = finetune.get_config(f"recipe={recipe},variant={variant},runlocal=True")
  pre = importlib.import_module(f"configs.{finetune.PRETRAIN_CONFIG[recipe]}").get_config(
      f"variant={variant},runlocal=True")
  for key in ("variant", "posemb", "layer_scale", "weight_init"):
    assert ft.student[key] == pre.student[key], key
  want = student_shapes(pre)
  if "rel_pos_bias/table" in want:
    assert ft.student.rel_pos == "per_layer"
    table = want.pop("rel_pos_bias/table")
    want.update({f"rel_pos_bias_{i}/table": table for i in range(2)})
  if pre.student.stage_skips:
    assert not ft.student.stage_skips
    want = {k: v for k, v in want.items() if not k.startswith(("skip1/", "skip2/"))}
  assert student_shapes(ft) == want


def test_recipe_values_from_the_papers():
  c = finetune.get_config("recipe=maskalign")
  assert (c.optim.base_lr, c.optim.layer_decay, c.student.drop_path, c.total_epochs,
          c.warmup_epochs) == (3e-4, 0.6, 0.2, 100.0, 5.0)
  c = finetune.get_config("recipe=mrmae")
  assert (c.optim.base_lr, c.optim.layer_decay, c.student.drop_path) == (3e-4, 0.6, 0.2)
  c = finetune.get_config("recipe=maskdistill,variant=L/16")
  assert (c.total_epochs, c.warmup_epochs, c.optim.layer_decay) == (50.0, 5.0, 0.75)
  assert (c.student.rel_pos, c.student.layer_scale, c.student.weight_init) == (
      "per_layer", 1e-5, "beit")
  assert optim.peak_lr(c.optim, c.batch_size) == pytest.approx(5e-4)  # BEiT's lr at batch 1024
  c = finetune.get_config("recipe=maskdistill,variant=H/14")
  assert (c.total_epochs, c.optim.layer_decay) == (30.0, 0.85)
  c = finetune.get_config("recipe=mae,variant=H/14")
  assert (c.optim.base_lr, c.optim.layer_decay, c.student.drop_path, c.total_epochs) == (
      1e-3, 0.75, 0.3, 50.0)
  assert finetune_b16.get_config("recipe=mae").to_dict() == finetune.get_config(
      "recipe=mae,variant=B/16").to_dict()
  with pytest.raises(ValueError, match="Unknown recipe 'beit'"):
    finetune.get_config("recipe=beit")


def test_per_block_tables_decay_with_their_block():
  z = np.zeros(2)
  tree = {"patch_embed": {"bias": z}, "block0": {"ln1": z}, "block1": {"ln1": z},
          "rel_pos_bias_0": {"table": z}, "rel_pos_bias_1": {"table": z}, "norm": {"scale": z}}
  s = optim.layer_decay_scales(tree, 0.5)
  assert s["rel_pos_bias_0"]["table"] == s["block0"]["ln1"] == 0.25
  assert s["rel_pos_bias_1"]["table"] == s["block1"]["ln1"] == 0.5
  assert s["patch_embed"]["bias"] == 0.125 and s["norm"]["scale"] == 1.0
