"""init_from: a fine-tune starts from another run's student, strictly, or stops in one line."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import finetune_b16, mae_b16
from mim_jax import checkpoint as ckpt_lib, init_from, sharding, step as step_lib, train


@pytest.fixture(scope="module")
def mae_workdir(tmp_path_factory):
  """A 2-step MAE pretraining run of the runlocal nano student (checkpoints at steps 1, 2)."""
  c = mae_b16.get_config("runlocal=True")
  c.total_steps, c.checkpoint_every, c.async_checkpoint = 2, 1, False
  workdir = str(tmp_path_factory.mktemp("mae"))
  train.train_and_evaluate(c, workdir)
  return workdir


def pretrained_student(workdir, step):
  c = mae_b16.get_config("runlocal=True")
  setup = train.make_setup(c, None, sharding.make_mesh(c.mesh), 2, 0)
  abstract, shardings = step_lib.state_shardings(setup)
  _, state = ckpt_lib.restore(ckpt_lib.manager(workdir), abstract, shardings, step=step)
  return jax.device_get(state.params["student"])


def finetune_config(spec):
  c = finetune_b16.get_config("runlocal=True")
  c.init_from = spec
  c.total_steps, c.checkpoint_every, c.async_checkpoint = 1, 1, False
  c.optim.lr, c.optim.weight_decay = 0.0, 0.0  # the step leaves the loaded student as it is
  return c


@pytest.mark.parametrize("step", [None, 1])
def test_finetune_starts_from_the_pretrained_student(tmp_path, mae_workdir, step):
  spec = mae_workdir if step is None else f"{mae_workdir}:{step}"
  result = train.train_and_evaluate(finetune_config(spec), str(tmp_path / "ft"))
  want = pretrained_student(mae_workdir, 2 if step is None else step)
  got = jax.device_get(result.state.params["student"])
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(x, y)
  # and the features the classifier computes are the pretrained student's
  images = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)
  student = result.setup.model_student()
  feats_got = student.apply({"params": got}, images, None)[0]
  feats_want = student.apply({"params": want}, images, None)[0]
  np.testing.assert_allclose(feats_got, feats_want, atol=1e-6)


def test_position_embedding_is_resized_bicubically():
  rng = np.random.default_rng(0)
  pe = rng.normal(size=(1, 1 + 4 * 4, 8)).astype(np.float32)
  out = init_from.resize_pos_embedding(pe, (1, 1 + 8 * 8, 8))
  assert out.shape == (1, 65, 8)
  np.testing.assert_array_equal(out[0, 0], pe[0, 0])  # CLS kept
  import torch
  ref = torch.nn.functional.interpolate(
      torch.from_numpy(pe[0, 1:].reshape(4, 4, 8).transpose(2, 0, 1))[None], size=(8, 8),
      mode="bicubic", align_corners=False)[0].numpy().transpose(1, 2, 0).reshape(64, 8)
  np.testing.assert_allclose(out[0, 1:], ref, atol=1e-5)


def test_missing_tensor_and_bad_shape_are_named():
  src = init_from.Source("workdir", "/x", 1)
  student = {"a": {"w": np.zeros((2, 3), np.float32)}, "b": np.zeros((4,), np.float32)}
  with pytest.raises(init_from.InitFromError, match="lacks 1 student tensors: b"):
    init_from.merge(student, {"a/w": np.ones((2, 3))}, src)
  with pytest.raises(init_from.InitFromError, match=r"a/w has shape \(3, 2\)"):
    init_from.merge(student, {"a/w": np.ones((3, 2)), "b": np.ones(4)}, src)
  tree, unused = init_from.merge(student, {"a/w": np.ones((2, 3)), "b": np.ones(4),
                                           "decoder/x": np.ones(1)}, src)
  assert unused == ["decoder/x"] and tree["a"]["w"].dtype == np.float32


def test_bad_init_from_fails_in_one_line_before_writing(tmp_path, mae_workdir):
  workdir = tmp_path / "never"
  for spec, words in [("/no/such/dir", "no such file"), (f"{mae_workdir}:7", "no checkpoint at step 7")]:
    r = subprocess.run(
        [sys.executable, "-m", "mim_jax.main", "--config", "configs/finetune_b16.py:runlocal=True",
         "--workdir", str(workdir), f"--config.init_from={spec}"], capture_output=True, text=True,
        cwd=os.path.dirname(os.path.dirname(__file__)), timeout=300)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and words in last, r.stderr[-2000:]
    assert not workdir.exists()
