"""method=linear_probe through the train loop: frozen encoder, measured BatchNorm, LARS head."""
import json
import os

import jax
import numpy as np
import pytest

from configs import linear_probe as linear_probe_config
from mim_jax import assembly, train
from mim_jax.data import input_pipeline
from mim_jax.objectives import linear_probe


def test_probe_trains_the_head_only_and_writes_top1(tmp_path):
  c = linear_probe_config.get_config("runlocal=True")
  c.total_steps, c.async_checkpoint = 6, False
  result = train.train_and_evaluate(c, str(tmp_path))
  params = jax.device_get(result.state.params)
  assert set(params) == {"student", "head", "probe_norm_mean", "probe_norm_var"}
  # the student is the one it started with (seed 0 init: same config, fresh init)
  fresh = assembly.make_setup(c, None, result.setup.mesh, 6, 0)
  from mim_jax import step as step_lib  # pylint: disable=import-outside-toplevel
  init = jax.device_get(step_lib.init_state(fresh, jax.random.key(c.seed)).params)
  for x, y in zip(jax.tree.leaves(params["student"]), jax.tree.leaves(init["student"])):
    np.testing.assert_array_equal(x, y)
  assert np.abs(params["head"]["kernel"] - init["head"]["kernel"]).max() > 0
  # BatchNorm statistics: those of the student's CLS features over the train split, computed
  # here from the model's tokens (not with the code that stored them), in float64
  assert c.objective.pool == "cls"
  student = result.setup.model_student()
  tokens = jax.jit(lambda p, x: student.apply({"params": p}, x, train=False)[0])
  cls = []
  for batch in input_pipeline.make_eval_iterator(c.data, split=c.data.split,
                                                 global_batch_size=c.eval.batch_size,
                                                 mesh=result.setup.mesh):
    valid = np.asarray(batch["valid"], bool)
    cls.append(np.asarray(tokens(params["student"], batch["image"]))[valid, 0])
  cls = np.concatenate(cls).astype(np.float64)
  assert cls.shape == (input_pipeline.num_examples(c.data, c.data.split), student.width)
  np.testing.assert_allclose(params["probe_norm_mean"], cls.mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(params["probe_norm_var"], cls.var(0), rtol=1e-5, atol=1e-6)
  assert float(params["probe_norm_var"].min()) > 0
  results = json.load(open(os.path.join(str(tmp_path), "results.json")))
  assert results["step"] == 6 and 0.0 <= results["final"]["eval/top1"] <= 1.0


def test_probe_refuses_a_trainable_encoder():
  c = linear_probe_config.get_config("runlocal=True")
  c.optim.frozen = ("student",)
  with pytest.raises(ValueError, match="trains the head only"):
    linear_probe.make_model(c, None)
