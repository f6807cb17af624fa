"""MR-MCMAE: MR-MAE's objective on the hybrid student; its config and the chain after a short run
(kNN, fine-tuning from its workdir, export refused). That the runlocal config trains with falling
loss is tests/test_configs.py::test_runlocal_trains_and_lowers_the_loss_on_digits."""
import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from configs import finetune, mrmcmae_b16_clip_b16
from mim_jax import export, init_from, optim, train
from mim_jax.analysis import cli
from mim_jax.models.convvit import ConvViT
from mim_jax.objectives import mrmae


def test_full_config_is_the_papers_recipe():
  c = mrmcmae_b16_clip_b16.get_config()
  assert c.method == "mrmae" and c.student.variant == "ConvB/16" and c.student.stage_skips
  assert (c.total_epochs, c.warmup_epochs, c.batch_size) == (400.0, 80.0, 1024)
  assert optim.peak_lr(c.optim, c.batch_size) == pytest.approx(1.5e-4)
  assert (c.mask.kind, c.mask.ratio) == ("focused", 0.75)
  assert (c.objective.mimic_weight, c.objective.recon_weight) == (0.5, 0.5)
  assert c.objective.decoder.depth == 8 and c.teacher.spec == "clip_b16"
  model = mrmae.make_model(c, ml_collections.ConfigDict(dict(width=768)))
  assert isinstance(model.student, ConvViT) and model.student.stage_skips
  assert model.fusion_layers == (2, 6, 10)  # 3 of the 11 transformer blocks
  assert model.decoder.out_dim == 16 * 16 * 3 and model.decoder.grid == (14, 14)
  with pytest.raises(ValueError, match="needs a hybrid student"):
    mrmcmae_b16_clip_b16.get_config("variant=B/16")


@pytest.fixture(scope="module")
def mrmcmae_workdir(tmp_path_factory, tiny_vit_teacher_dir):
  """A 4-step MR-MCMAE runlocal pretraining run through the real loop, kNN at its end."""
  c = mrmcmae_b16_clip_b16.get_config("runlocal=True")
  c.teacher.spec = tiny_vit_teacher_dir  # a real transformers checkpoint, random weights
  c.total_steps, c.checkpoint_every, c.async_checkpoint = 4, 4, False
  c.eval.every, c.eval.batch_size = 4, 512  # few, large kNN batches: less to run
  workdir = str(tmp_path_factory.mktemp("mrmcmae"))
  train.train_and_evaluate(c, workdir)
  return workdir


@pytest.mark.slow
def test_knn_then_finetune_from_the_hybrid_workdir(mrmcmae_workdir, tmp_path):
  """kNN ran on the hybrid's pooled features; a fine-tune (recipe mrmcmae) starts from the
  workdir: every backbone tensor loaded, the stage skips dropped, top-1 in results.json."""
  with open(os.path.join(mrmcmae_workdir, "metrics.jsonl")) as f:
    knn = [json.loads(line)["knn/top1"] for line in f if "knn/top1" in line]
  assert knn and 0.0 <= knn[-1] <= 1.0
  c = finetune.get_config("recipe=mrmcmae,variant=ConvB/16,runlocal=True")
  assert (c.optim.layer_decay, c.student.drop_path, c.total_epochs) == (0.6, 0.2, None)
  assert c.student.variant == "Convnano/16" and not c.student.stage_skips
  c.init_from = mrmcmae_workdir
  c.total_steps, c.checkpoint_every, c.async_checkpoint = 1, 1, False
  c.optim.lr, c.optim.weight_decay = 0.0, 0.0  # the step leaves the loaded student as it is
  result = train.train_and_evaluate(c, str(tmp_path / "ft"))
  got = jax.device_get(result.state.params["student"])
  want = init_from.read_workdir_state(mrmcmae_workdir, 4)["params"]["student"]
  assert set(want) - set(got) == {"skip1", "skip2"}
  for name in got:
    for x, y in zip(jax.tree.leaves(got[name]), jax.tree.leaves(want[name])):
      np.testing.assert_array_equal(x, y)
  results = json.load(open(tmp_path / "ft" / "results.json"))
  assert 0.0 <= results["final"]["eval/top1"] <= 1.0
  with pytest.raises(ValueError, match="hybrid"):
    export.export_workdir(str(tmp_path / "ft"), str(tmp_path / "out"), "timm")
  assert not os.path.exists(tmp_path / "out")


@pytest.mark.slow
def test_analysis_of_the_hybrid_workdir(mrmcmae_workdir, tmp_path):
  """The analysis CLI on the hybrid: per transformer block and head, the mean token in the CLS
  slot (see models/convvit.py)."""
  report = cli.main(["--workdir", mrmcmae_workdir, "--out", str(tmp_path), "--batch_size", "8"])
  m = report["measures"]["student"]
  assert report["grid"] == [4, 4]
  assert np.asarray(m["attention_distance"]).shape == (2, 2)  # Convnano: 2 blocks of 2 heads
  assert np.isfinite(np.asarray(m["attention_entropy"])).all()
  assert os.path.isfile(tmp_path / "analysis.json")


def test_finetune_recipe_of_the_paper():
  c = finetune.get_config("recipe=mrmcmae,variant=ConvB/16")
  assert (c.total_epochs, c.warmup_epochs, c.optim.layer_decay) == (100.0, 5.0, 0.6)
  assert optim.peak_lr(c.optim, 256) == pytest.approx(3e-4) and c.student.drop_path == 0.2
  assert c.student.variant == "ConvB/16" and not c.student.stage_skips
  with pytest.raises(ValueError, match="use ConvB/16"):
    finetune.get_config("recipe=mrmcmae,variant=B/16")
