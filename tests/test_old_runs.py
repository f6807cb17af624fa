"""Old runs keep working: the workdirs an older main wrote (tests/fixtures/old_runs/<commit>/,
see tests/fixtures/README.md) resume, serve init_from, export and run the analysis with today's
code, and their saved config.json reads, renamed keys included.

Every test works on a copy of the fixture in tmp, with the current directory set to the copy
(the runs recorded their teacher and init_from relative to it). A test that fails here is a user's
run that the change breaks: read the old form (a renamed key goes into
mim_jax/config.py's RENAMED), never remake the fixture.
"""
import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from flax import traverse_util

from mim_jax import config as config_lib, export, init_from, saved_config
from mim_jax.analysis import cli as analysis_cli
from mim_jax.evaluation import classification
from mim_jax.tools import config_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = sorted(glob.glob(os.path.join(ROOT, "tests", "fixtures", "old_runs", "*")))
IDS = [os.path.basename(f) for f in FIXTURES]


def made(fixture: str) -> dict:
  with open(os.path.join(fixture, "made.json")) as f:
    return json.load(f)


def command_config(command: str) -> tuple[str, list[str]]:
  """(config spec with the repo's path, the --config.x=y overrides) of a recorded command."""
  args = command.split()
  spec = args[args.index("--config") + 1]
  return os.path.join(ROOT, spec), [a for a in args if a.startswith("--config.")]


def main_args(command: str) -> list[str]:
  """A recorded `python -m mim_jax.main ...` command's arguments, its config file in this repo."""
  args = command.split()[3:]
  i = args.index("--config") + 1
  args[i] = os.path.join(ROOT, args[i])
  return args


def run(module: str, args: list[str], cwd: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=ROOT)
  r = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  return r


@pytest.fixture(params=FIXTURES, ids=IDS)
def old(request, tmp_path, monkeypatch):
  """A copy of one fixture, the current directory set to it."""
  copy = tmp_path / "old"
  shutil.copytree(request.param, copy)
  monkeypatch.chdir(copy)
  return copy


def student_tensors(workdir, step) -> dict[str, np.ndarray]:
  state = init_from.read_workdir_state(str(workdir), step)
  return {"/".join(k): v for k, v in traverse_util.flatten_dict(state["params"]["student"]).items()}


def steps_in(workdir) -> list[int]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line)["step"] for line in f]


# ---- the saved configs -------------------------------------------------------------------------
@pytest.mark.parametrize("fixture", FIXTURES, ids=IDS)
@pytest.mark.parametrize("run_index", [0, 1], ids=["maskalign", "finetune"])
def test_every_saved_key_is_a_key_of_todays_config(fixture, run_index):
  """A key renamed (or removed) since the fixture was made fails here until RENAMED maps it."""
  command = made(fixture)["commands"][run_index]
  workdir = os.path.join(fixture, command.split("--workdir ")[1].split()[0])
  spec, _ = command_config(command)
  assert saved_config.unknown_keys(workdir, config_file.load(spec)) == []


def test_a_renamed_key_is_read_under_its_new_name_and_refused_on_the_command_line(tmp_path):
  """The check above, on a copy of today's config code with eval.knn_k (20) renamed to
  eval.knn_k2 (default 7): it names the key, and the old run's value is lost to the new default,
  until RENAMED maps it; then the old config.json's 20 is read under the new name, and
  --config.eval.knn_k is refused naming --config.eval.knn_k2."""
  copy = tmp_path / "repo"
  for part in ("configs", "mim_jax"):
    shutil.copytree(os.path.join(ROOT, part), copy / part,
                    ignore=shutil.ignore_patterns("__pycache__"))
  defaults = copy / "mim_jax" / "defaults.py"
  text = defaults.read_text()
  assert text.count("knn_k=20") == 1
  defaults.write_text(text.replace("knn_k=20", "knn_k2=7"))
  fixture = os.path.join(FIXTURES[0], "maskalign")
  script = (
      "import json, sys\nfrom mim_jax import config as config_lib, saved_config\n"
      "from mim_jax.tools import config_file\n"
      "renamed = json.loads(sys.argv[1])\n"
      "today = config_file.load('configs/maskalign_b16_clip_b16.py:runlocal=True')\n"
      f"print(saved_config.unknown_keys({fixture!r}, today, renamed))\n"
      f"print(saved_config.read({fixture!r}, renamed)['eval'].get('knn_k2'))\n"
      "config_lib.RENAMED.update(renamed)\n"
      "try:\n  config_file.check_keys(today, ['eval.knn_k'], prefix='--config.')\n"
      "except KeyError as e:\n  print(e.args[0])\n")
  env = dict(os.environ, PYTHONPATH=f"{copy}{os.pathsep}{ROOT}")

  def check(renamed):
    r = subprocess.run([sys.executable, "-c", script, json.dumps(renamed)], cwd=copy, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.split("\n")[:3]

  # the test above would fail on this copy, and the old value would give way to the default
  assert check({}) == ["['eval.knn_k']", "7",
                       "--config.eval.knn_k is not a field of the config; did you mean "
                       "--config.eval.knn_k2?"]
  assert check({"eval.knn_k": "eval.knn_k2"}) == [
      "[]", "20", "--config.eval.knn_k was renamed to --config.eval.knn_k2: use that"]


def test_the_finetune_results_read(old):
  results = classification.read_results(str(old / "finetune"))
  assert results["step"] == 4
  assert results["final"]["eval/top1"] == pytest.approx(0.1)  # what the old run measured
  assert results["best"]["eval/top5"]["step"] == 4


# ---- what a user does with an old run ----------------------------------------------------------
@pytest.mark.slow
def test_pretraining_resumes_with_its_command(old):
  """The command that made the run, two steps longer: restores step 4, trains 5 and 6."""
  before = steps_in(old / "maskalign")
  assert before == [1, 2, 3, 4]
  r = run("mim_jax.main", main_args(made(old)["commands"][0]) + ["--config.total_steps=6"], old)
  assert "Resumed from step 4" in r.stderr
  assert "total_steps 4 -> 6" in r.stderr  # the resume read the old config.json, and says so
  assert steps_in(old / "maskalign") == [1, 2, 3, 4, 5, 6]
  state = init_from.read_workdir_state(str(old / "maskalign"), 6)
  assert int(state["step"]) == 6
  for name, value in student_tensors(old / "maskalign", 4).items():
    assert value.shape == student_tensors(old / "maskalign", 6)[name].shape


@pytest.mark.slow
def test_a_finetune_from_it_loads_every_student_tensor(old):
  """The fine-tune command on a fresh workdir, one step at learning rate 0: its student is the
  old run's, tensor by tensor."""
  args = main_args(made(old)["commands"][1])
  args[args.index("--workdir") + 1] = "finetune_again"
  run("mim_jax.main", args + ["--config.total_steps=1", "--config.checkpoint_every=1",
                              "--config.eval.every=0", "--config.optim.lr=0.0",
                              "--config.optim.weight_decay=0.0"], old)
  want = student_tensors(old / "maskalign", 4)
  got = student_tensors(old / "finetune_again", 1)
  assert sorted(got) == sorted(want) and len(want) > 20
  for name, value in want.items():
    np.testing.assert_array_equal(got[name], value, err_msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["hf", "timm"])
def test_pretraining_exports(old, fmt, capsys):
  assert export.main(["--workdir", "maskalign", "--format", fmt, "--out", "export"]) == 0
  out = capsys.readouterr().out
  assert f"step 4 of maskalign -> {fmt} export" in out
  if fmt == "hf":
    assert "self-check: transformers loads it strictly" in out
  with open(old / "export" / "config.json") as f:
    written = json.load(f)
  depth = config_lib.decode_variant(saved_config.load("maskalign").student.variant)[0].depth
  if fmt == "hf":
    assert written["num_hidden_layers"] == depth and "id2label" not in written
  else:
    assert written["model_args"]["depth"] == depth


@pytest.mark.slow
def test_finetune_exports_with_its_head(old, capsys):
  """timm's format (transformers' classifier pools the CLS token; this head averages)."""
  assert export.main(["--workdir", "finetune", "--format", "timm", "--out", "export"]) == 0
  assert "step 4 of finetune -> timm export" in capsys.readouterr().out
  with open(old / "export" / "config.json") as f:
    written = json.load(f)
  assert (written["num_classes"], written["global_pool"]) == (10, "avg")
  assert written["label_names"] == [str(i) for i in range(10)]  # the digits' class names


@pytest.mark.slow
def test_the_analysis_runs(old):
  report = analysis_cli.main(["--workdir", "maskalign", "--teacher", "--batch_size", "16"])
  assert report["step"] == 4 and report["method"] == "maskalign"
  assert {"student", "teacher"} <= set(report["measures"])
  assert os.path.isfile(old / "maskalign" / "analysis" / "analysis.json")


@pytest.mark.parametrize("fixture", FIXTURES, ids=IDS)
def test_keys_a_run_ignored_are_dropped_only_where_today_lacks_them(fixture):
  """The fine-tune's config.json holds teacher, mask-ratio and kNN settings its run never read
  (today's classify configs lack them): read without them; the pretraining keeps its own."""
  ft = config_lib.flatten(saved_config.read(os.path.join(fixture, "finetune")))
  pre = config_lib.flatten(saved_config.read(os.path.join(fixture, "maskalign")))
  for key in ("teacher.dtype", "teacher.resize_to_student", "mask.ratio", "eval.knn_k",
              "runlocal"):
    assert key not in ft and key in pre, key
  assert ft["optim.b1"] == 0.9 and ft["optim.layer_decay"] == 0.6
