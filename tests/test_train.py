"""The train loop end to end on the digits dataset: exact resume, mesh change, NaN stop,
one-line errors for bad input."""
import json
import os
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

from configs import maskalign_b16_clip_b16
from mim_jax import assembly, checkpoint as ckpt_lib, sharding, step as step_lib, train
from mim_jax.convert import scan as scan_lib


def config_for(teacher_dir, total_steps, **kw):
  c = maskalign_b16_clip_b16.get_config("runlocal=True")
  c.teacher.spec = teacher_dir
  c.total_steps = total_steps
  c.checkpoint_every = 2
  c.optim.lr = 1e-3
  c.async_checkpoint = True
  for k, v in kw.items():
    c[k] = v
  return c


def losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {r["step"]: r["loss"] for r in map(json.loads, f)}


def restore_params(config, workdir, mesh_spec):
  teacher = assembly.load_teacher(config)
  config.mesh.data, config.mesh.fsdp = mesh_spec
  setup = assembly.make_setup(config, teacher, sharding.make_mesh(config.mesh), 4, 0)
  abstract, shardings = step_lib.state_shardings(setup)
  return ckpt_lib.restore(ckpt_lib.manager(workdir), abstract, shardings)


@pytest.mark.slow
def test_resume_is_exact_and_restores_on_another_mesh(tmp_path, tiny_vit_teacher_dir):
  straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
  train.train_and_evaluate(config_for(tiny_vit_teacher_dir, 4), straight)
  train.train_and_evaluate(config_for(tiny_vit_teacher_dir, 2), split)
  assert sorted(os.listdir(os.path.join(split, "checkpoints"))) == ["2"]
  train.train_and_evaluate(config_for(tiny_vit_teacher_dir, 4), split)  # resumes at 2
  a, b = losses(straight), losses(split)
  assert sorted(a) == sorted(b) == [1, 2, 3, 4]
  assert [a[s] for s in a] == [b[s] for s in a]  # bit-identical losses
  step_a, state_a = restore_params(config_for(tiny_vit_teacher_dir, 4), straight, (8, 1))
  step_b, state_b = restore_params(config_for(tiny_vit_teacher_dir, 4), split, (2, 4))
  assert step_a == step_b == 4
  qkv = state_b.params["student"]["block0"]["attn"]["qkv_kernel"]
  assert qkv.sharding.mesh.shape["fsdp"] == 4 and qkv.sharding.spec[0] == "fsdp"
  chex.assert_trees_all_equal(jax.device_get(state_a), jax.device_get(state_b))


def test_non_finite_loss_stops_with_step_and_checkpoint(tmp_path, tiny_vit_teacher_dir):
  config = config_for(tiny_vit_teacher_dir, 6)
  config.optim.lr = 1e30  # diverges within a few steps
  config.optim.b1 = 0.0
  with pytest.raises(train.NonFiniteLossError, match=r"at step \d+.*(checkpoint|no checkpoint)"):
    train.train_and_evaluate(config, str(tmp_path / "nan"))


def run_main(args, env_extra=None):
  env = dict(os.environ, **(env_extra or {}))
  return subprocess.run([sys.executable, "-m", "mim_jax.main", *args], capture_output=True,
                        text=True, env=env, cwd=os.path.dirname(os.path.dirname(__file__)),
                        timeout=300)


def test_misspelt_override_names_closest_key(tmp_path):
  r = run_main(["--config", "configs/maskalign_b16_clip_b16.py:runlocal=True",
                "--workdir", str(tmp_path), "--config.mask.ration=0.5"])
  assert r.returncode != 0
  assert "did you mean --config.mask.ratio?" in r.stderr.strip().splitlines()[-1]


def test_missing_teacher_directory_is_one_line(tmp_path):
  r = run_main(["--config", "configs/maskalign_b16_clip_b16.py:runlocal=True",
                "--workdir", str(tmp_path), "--config.teacher.spec=/nonexistent/teacher"])
  assert r.returncode != 0
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("error:") and "/nonexistent/teacher" in last
  assert os.listdir(tmp_path) == []  # nothing written


def test_eval_pool_is_a_config_key_checked_before_writing(tmp_path, tiny_vit_teacher_dir):
  assert config_for(tiny_vit_teacher_dir, 1).eval.pool == "cls"
  r = run_main(["--config", "configs/maskalign_b16_clip_b16.py:runlocal=True",
                "--workdir", str(tmp_path), f"--config.teacher.spec={tiny_vit_teacher_dir}",
                "--config.eval.pool=max"])
  assert r.returncode != 0
  last = r.stderr.strip().splitlines()[-1]
  assert last == ("error: --config.eval.pool='max' is out of range: eval.pool takes one of "
                  "'cls', 'mean'.")
  assert os.listdir(tmp_path) == []  # nothing written


def test_missing_dataset_is_one_line(tmp_path, tiny_vit_teacher_dir):
  r = run_main(["--config", "configs/maskalign_b16_clip_b16.py:runlocal=True",
                "--workdir", str(tmp_path), f"--config.teacher.spec={tiny_vit_teacher_dir}",
                "--config.data.name=imagenet2012", f"--config.data.data_dir={tmp_path}/none"])
  assert r.returncode != 0
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("error:") and "imagenet2012" in last and "data_dir" in last


@pytest.mark.slow
def test_interrupt_writes_a_checkpoint_and_resumes(tmp_path, tiny_vit_teacher_dir):
  """Ctrl-C (SIGINT) mid-run: the loop finishes its step, checkpoints it and exits cleanly."""
  import signal
  import time
  workdir = str(tmp_path / "run")
  args = [sys.executable, "-m", "mim_jax.main", "--config",
          "configs/maskalign_b16_clip_b16.py:runlocal=True", "--workdir", workdir,
          f"--config.teacher.spec={tiny_vit_teacher_dir}", "--config.total_steps=100000",
          "--config.checkpoint_every=100000"]
  proc = subprocess.Popen(args, cwd=os.path.dirname(os.path.dirname(__file__)),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 240
  while time.time() < deadline and not (os.path.exists(metrics) and
                                        len(open(metrics).readlines()) >= 3):
    time.sleep(0.5)
  proc.send_signal(signal.SIGINT)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out[-2000:]
  steps = [int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))]
  assert len(steps) == 1 and 3 <= steps[0] < 100000
  assert "the same command resumes from it" in out


def test_profile_writes_a_trace_of_the_asked_steps(tmp_path, tiny_vit_teacher_dir):
  config = config_for(tiny_vit_teacher_dir, 3)
  config.profile.first_step, config.profile.num_steps = 1, 1
  train.train_and_evaluate(config, str(tmp_path))
  traces = list((tmp_path / "profile").rglob("*.xplane.pb"))
  perfetto = list((tmp_path / "profile").rglob("*.trace.json.gz"))
  assert len(traces) == 1 and len(perfetto) == 1 and traces[0].stat().st_size > 0


@pytest.mark.slow
def test_resume_across_student_scan(tmp_path, tiny_vit_teacher_dir):
  """A run resumes from checkpoints written with the other `student.scan`: unscanned to step 2,
  scanned to 4, unscanned to 6 train as one unscanned run does (parameters and both Adam moments
  restacked; the scanned blocks compute the same to float rounding)."""
  def config(total, scan):
    c = config_for(tiny_vit_teacher_dir, total)
    c.student.scan, c.student.drop_path = scan, 0.0  # scan draws drop-path masks per layer
    return c
  plain, mixed = str(tmp_path / "plain"), str(tmp_path / "mixed")
  for total, scan in ((2, False), (4, True), (6, False)):  # the same schedules in both
    train.train_and_evaluate(config(total, False), plain)
    train.train_and_evaluate(config(total, scan), mixed)
  a, b = losses(plain), losses(mixed)
  assert sorted(b) == [1, 2, 3, 4, 5, 6]
  assert [b[s] for s in (1, 2)] == [a[s] for s in (1, 2)]
  np.testing.assert_allclose([b[s] for s in sorted(a)], [a[s] for s in sorted(a)], rtol=1e-5)
  c = config(6, True)  # read the last (unscanned) checkpoint into a scanned student
  setup = assembly.make_setup(c, assembly.load_teacher(c), sharding.make_mesh(c.mesh), 6, 0)
  step, state_b, _ = scan_lib.restore_any_layout(ckpt_lib.manager(mixed),
                                              *step_lib.state_shardings(setup))
  assert step == 6 and "layers" in state_b.params["student"]
  assert "block0" not in state_b.params["student"]
  state_b = scan_lib.restack_state(jax.device_get(state_b), ())
  _, state_a = restore_params(config(6, False), plain, (8, 1))

  def without_key_bias(state):  # its true gradient is 0: Adam scales rounding noise up to lr
    return jax.tree_util.tree_map_with_path(
        lambda p, x: np.asarray(x)[[0, 2]] if "qkv_bias" in jax.tree_util.keystr(p) else x,
        jax.device_get(state))
  chex.assert_trees_all_close(without_key_bias(state_a), without_key_bias(state_b),
                              rtol=1e-4, atol=1e-6)


def test_the_objective_chooses_the_evaluation_and_its_contract_is_enforced(monkeypatch):
  """Pretraining objectives report kNN of the student's features, classifiers their top-1 /
  top-5; a module without the whole contract is refused by name, not found missing mid-run."""
  from mim_jax import objectives  # pylint: disable=import-outside-toplevel
  from mim_jax.objectives import evaluators  # pylint: disable=import-outside-toplevel
  classifiers = {"classify", "linear_probe"}
  for method in objectives.METHODS:
    want = evaluators.classifier_accuracy if method in classifiers else evaluators.student_knn
    assert objectives.get(method).evaluate is want, method
  monkeypatch.setitem(objectives.METHODS, "broken", "mim_jax.objectives.evaluators")
  with pytest.raises(TypeError, match=r"lacks \['make_model', 'loss_fn', 'default_config', "
                                      r"'evaluate', 'prepare_state'\]"):
    objectives.get("broken")
