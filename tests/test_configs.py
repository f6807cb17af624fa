"""Every config in configs/ builds, and at its runlocal size trains on the digits data with
falling loss."""
import glob
import importlib
import json
import os

import numpy as np
import pytest

from mim_jax import config as config_lib, objectives, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                 if not os.path.basename(p).startswith(("_", "common")))


def load(name, arg=None):
  return importlib.import_module(f"configs.{name}").get_config(arg)


def test_configs_exist_for_every_method():
  methods = {load(name).method for name in CONFIGS}
  assert set(objectives.METHODS) <= methods


@pytest.mark.parametrize("name", CONFIGS)
def test_full_size_config_is_valid(name):
  c = load(name)
  config_lib.decode_variant(c.student.variant)
  assert c.method in objectives.METHODS
  assert c.batch_size > 0 and c.data.image_size % config_lib.decode_variant(
      c.student.variant)[1] == 0
  doc = importlib.import_module(f"configs.{name}").__doc__ or ""
  assert "python -m mim_jax.main --config configs/" in doc  # the command that runs it


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIGS)
def test_runlocal_trains_and_lowers_the_loss_on_digits(name, tmp_path, tiny_vit_teacher_dir):
  """Each method's runlocal config, 16 steps on the digits demo data through the real loop."""
  c = load(name, "runlocal=True")
  if c.teacher.get("spec"):
    c.teacher.spec = tiny_vit_teacher_dir  # a real transformers checkpoint, random weights
  c.total_steps, c.warmup_steps, c.warmup_percent = 16, 0, None
  c.optim.lr, c.optim.schedule = 2e-3, "constant"
  c.log_every, c.checkpoint_every = 1, 16
  result = train.train_and_evaluate(c, str(tmp_path))
  assert int(result.state.step) == 16
  assert os.listdir(tmp_path / "checkpoints") == ["16"]
  with open(tmp_path / "metrics.jsonl") as f:
    losses = [json.loads(line)["loss"] for line in f]
  assert len(losses) == 16 and np.isfinite(losses).all()
  if c.method != "classify":  # supervised from scratch needs more than 16 small steps; it is
    # shown to fit a fixed batch in tests/test_classify.py
    assert np.mean(losses[-4:]) < np.mean(losses[:4]), losses
