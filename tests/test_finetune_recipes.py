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
  assert (c.student.rel_pos, c.student.layer_scale, c.student.weight_init) == (
      "per_layer", 1e-5, "beit")
  c = finetune.get_config("recipe=mae,variant=H/14")
  assert (c.optim.base_lr, c.optim.layer_decay, c.student.drop_path, c.total_epochs) == (
      1e-3, 0.75, 0.3, 50.0)
  assert finetune_b16.get_config("recipe=mae").to_dict() == finetune.get_config(
      "recipe=mae,variant=B/16").to_dict()
  with pytest.raises(ValueError, match="Unknown recipe 'beit'"):
    finetune.get_config("recipe=beit")


# MaskDistill's Table 13 (Appendix C, p. 17): peak lr (at batch 1024), fine-tuning epochs,
# warmup epochs, layer-wise lr decay, stochastic depth; the main text's L layer decay (0.75,
# Section 4.1) is superseded by the table.
MASKDISTILL_TABLE_13 = {"B/16": (5e-4, 100, 20, 0.65, 0.1), "L/16": (5e-4, 50, 5, 0.8, 0.2),
                        "H/14": (2e-4, 30, 5, 0.85, 0.25)}


@pytest.mark.parametrize("variant", sorted(MASKDISTILL_TABLE_13))
def test_maskdistill_fine_tune_is_its_table_13(variant):
  c = finetune.get_config(f"recipe=maskdistill,variant={variant}")
  lr, epochs, warmup, layer_decay, drop_path = MASKDISTILL_TABLE_13[variant]
  assert c.batch_size == 1024
  assert optim.peak_lr(c.optim, c.batch_size) == pytest.approx(lr, rel=1e-9)
  assert (c.total_epochs, c.warmup_epochs, c.optim.layer_decay, c.student.drop_path) == (
      epochs, warmup, layer_decay, drop_path)
  # the table's shared rows
  assert (c.optim.min_lr, c.optim.b1, c.optim.b2, c.optim.eps, c.optim.weight_decay) == (
      1e-6, 0.9, 0.999, 1e-8, 0.05)
  assert (c.objective.label_smoothing, c.objective.mixup, c.objective.cutmix) == (0.1, 0.8, 1.0)
  assert (c.augment.randaugment, c.augment.random_erasing) == ("rand-m9-mstd0.5-inc1", 0.25)
  assert c.optim.clip_norm is None and c.data.image_size == 224


def test_per_block_tables_decay_with_their_block():
  z = np.zeros(2)
  tree = {"patch_embed": {"bias": z}, "block0": {"ln1": z}, "block1": {"ln1": z},
          "rel_pos_bias_0": {"table": z}, "rel_pos_bias_1": {"table": z}, "norm": {"scale": z}}
  s = optim.layer_decay_scales(tree, 0.5)
  assert s["rel_pos_bias_0"]["table"] == s["block0"]["ln1"] == 0.25
  assert s["rel_pos_bias_1"]["table"] == s["block1"]["ln1"] == 0.5
  assert s["patch_embed"]["bias"] == 0.125 and s["norm"]["scale"] == 1.0


# --------------------------------------------------------------------------------------------
# Fine-tuning CLIP itself (the analysis paper's Figure 8 runs): configs/finetune_clip.py.
# --------------------------------------------------------------------------------------------
def test_clip_fine_tune_is_the_analysis_papers_column():
  """Appendix D, Table 1, column CLIP/ViT-B/16 of the masked-distillation analysis paper."""
  from configs import finetune_clip  # pylint: disable=import-outside-toplevel
  c = finetune_clip.get_config()
  assert (c.total_epochs, c.warmup_epochs, c.batch_size) == (50.0, 10.0, 1024)
  assert optim.peak_lr(c.optim, c.batch_size) == pytest.approx(5e-5, rel=1e-9)
  assert (c.optim.b1, c.optim.b2, c.optim.min_lr, c.optim.layer_decay, c.optim.weight_decay) == (
      0.9, 0.95, 1e-7, 0.6, 0.05)
  assert (c.student.drop_path, c.objective.label_smoothing, c.objective.mixup,
          c.objective.cutmix) == (0.0, 0.1, 0.0, 0.0)
  assert tuple(c.data.crop_scale) == (0.08, 1.0) and c.augment.random_erasing == 0.25
  assert c.student.rel_pos == "per_layer" and c.optim.frozen == ("student/patch_embed",)
  assert (c.student.act, c.student.ln_eps, c.student.pre_norm, c.student.posemb) == (
      "quick_gelu", 1e-5, True, "learned")
  assert c.init_from == "clip_b16"


def _classifier_params(config):
  """The abstract parameter tree of the config's classifier (no compute)."""
  from mim_jax.objectives import classify  # pylint: disable=import-outside-toplevel
  model = classify.make_model(config, None)
  size = config.data.image_size
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  return nn.meta.unbox(variables["params"])


def test_frozen_blocks_rows_freeze_the_first_k_blocks():
  """Figure 8c's rows on the real ViT-B/16 tree: k blocks (and the embedding below them) get no
  update, the blocks above and the head do."""
  from configs import finetune_clip  # pylint: disable=import-outside-toplevel
  from mim_jax.tools import config_file  # pylint: disable=import-outside-toplevel
  rows = config_file.load_module("configs/sweeps/analysis_frozen_blocks.py")
  params = _classifier_params(finetune_clip.get_config())
  for k in (0, 1, 5, 12):
    mask = traverse_util.flatten_dict(optim.frozen_mask(params, rows.frozen(k)), sep="/")
    blocks = {int(n.split("/")[1][5:]) for n, m in mask.items()
              if m and n.startswith("student/block")}
    assert blocks == set(range(k)), k
    assert mask["student/patch_embed/kernel"] and not mask["head/kernel"]
    assert mask["student/cls"] == (k > 0) and mask["student/pre_norm/scale"] == (k > 0)
    assert all(mask[f"student/rel_pos_bias_{i}/table"] == (i < k) for i in range(12))


@pytest.mark.slow
def test_a_clip_tower_fine_tunes_with_its_first_blocks_frozen(tmp_path):
  """configs/finetune_clip.py:runlocal=True from a random CLIP tower of the nano size, block 0
  and the embedding frozen (Figure 8c's k = 1): after training they are the tower's weights as
  init_from maps them, and block 1 has moved."""
  import transformers  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  from configs import finetune_clip  # pylint: disable=import-outside-toplevel
  from mim_jax import init_from, train  # pylint: disable=import-outside-toplevel
  from mim_jax.tools import config_file  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  clip_dir = str(tmp_path / "clip")
  transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
      hidden_size=32, intermediate_size=64, num_attention_heads=2, patch_size=4, image_size=16,
      num_hidden_layers=2, layer_norm_eps=1e-5, hidden_act="quick_gelu")).save_pretrained(clip_dir)
  rows = config_file.load_module("configs/sweeps/analysis_frozen_blocks.py")
  c = finetune_clip.get_config("runlocal=True")
  c.init_from, c.optim.frozen, c.optim.lr = clip_dir, rows.frozen(1), 1e-2
  c.async_checkpoint = False
  result = train.train_and_evaluate(c, str(tmp_path / "run"))
  student = traverse_util.flatten_dict(jax.device_get(result.state.params["student"]), sep="/")
  template = _classifier_params(c)["student"]  # ShapeDtypeStructs: load_student reads their shapes
  loaded = traverse_util.flatten_dict(
      init_from.load_student(clip_dir, template, result.setup.model_student()), sep="/")
  for name, value in student.items():
    frozen = name.startswith(("block0/", "rel_pos_bias_0/", "patch_embed/", "cls", "pos_emb",
                              "pre_norm/"))
    # (the final norm gets no gradient under average pooling: it stays as loaded)
    assert np.array_equal(value, loaded[name]) == frozen or name.startswith("norm/"), name


@pytest.mark.parametrize("sweep_file", ["mrmae_tricks.py", "mrmae_methods.py"])
def test_mrmae_sweeps_run_their_mae_rows_with_mrmae_s_recipe(sweep_file):
  """MR-MAE's Section 4.1 ("Experiment Setups"): batch 1024, peak lr 1.5e-4, warmup 80 of 400
  epochs; the MAE rows (mimic weight 0) are trained with it too, not with MAE's own recipe
  (configs/mae_b16.py: batch 4096, peak 2.4e-3, 40 warmup epochs)."""
  from mim_jax.tools import config_file  # pylint: disable=import-outside-toplevel
  module = config_file.load_module(f"configs/sweeps/{sweep_file}")
  mae_rows = [p for p in module.sweep() if p["objective.mimic_weight"] == 0.0]
  assert mae_rows
  for point in mae_rows:
    c = config_file.load(module.CONFIG)
    for key, value in point.items():
      parent, _, leaf = key.rpartition(".")
      (config_file.get_dotted(c, parent) if parent else c)[leaf] = value
    assert c.batch_size == 1024 and c.warmup_percent == 0.2 and c.warmup_epochs is None
    assert optim.peak_lr(c.optim, c.batch_size) == pytest.approx(1.5e-4, rel=1e-9)
    assert (c.objective.mimic_weight, c.objective.recon_weight) == (0.0, 1.0)
