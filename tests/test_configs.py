"""Every config in configs/ builds, and at its runlocal size trains on the digits data with
falling loss."""
import glob
import importlib
import os

import numpy as np
import pytest

from mim_jax import config as config_lib, objectives

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
def test_runlocal_trains_and_lowers_the_loss_on_digits(name, runlocal_run):
  """Each method's runlocal config, 16 steps on the digits demo data through the real loop
  (`runlocal_run` in conftest.py: the demo's teacher, the kNN evaluation at the end)."""
  run = runlocal_run(name)
  assert run.step == 16 and run.checkpoints == ["16"]
  losses = run.losses
  assert len(losses) == 16 and np.isfinite(losses).all()
  if run.method != "classify":  # supervised from scratch needs more than 16 small steps; it is
    # shown to fit a fixed batch in tests/test_classify.py
    assert np.mean(losses[-4:]) < np.mean(losses[:4]), losses
