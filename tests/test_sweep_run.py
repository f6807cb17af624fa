"""launch/sweep.py end to end: every row a pretraining and then its fine-tune (init_from = the row),
seeds, resuming without redoing, and the summary read from what the runs wrote."""
import json
import math
import os
import shlex
import subprocess
import sys

import pytest

from mim_jax.tools import config_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "launch", "sweep.py")
sweep_lib = config_file.load_module(SCRIPT)
MASKALIGN_LOCAL = "configs/maskalign_b16_clip_b16.py:runlocal=True"


def write_sweep(path, rows, evaluation="finetune"):
  """A sweep of runlocal MaskAlign rows: top_k values, or dicts of overrides."""
  rows = [r if isinstance(r, dict) else {"objective.top_k": r} for r in rows]
  path.write_text(
      f"CONFIG = {MASKALIGN_LOCAL!r}\nMETRIC = 'fine-tune top-1 (%)'\n"
      f"EVALUATION = {evaluation!r}\nRECIPE = 'maskalign'\n"
      f"def sweep():\n  return {rows!r}\n"
      f"def paper():\n  return {[84.9 + 0.1 * i for i in range(len(rows))]!r}\n")
  return str(path)


# A row whose pretraining stops with an error: the teacher has no layer 9.
BAD_ROW = {"objective.layer_weights": "mid", "objective.mid_layer": 9}
BAD_NAME = "layer_weights=mid,mid_layer=9"


# --------------------------------------------------------------------------------------------
# What a row runs (no training).
# --------------------------------------------------------------------------------------------
def test_a_row_is_its_pretraining_then_a_fine_tune_from_it(tmp_path):
  sweep = sweep_lib.load(write_sweep(tmp_path / "s.py", [1, 2]))
  config = sweep_lib.sweep_config(sweep.path, None)
  (pipe,) = [p for p in sweep_lib.pipelines(sweep, config, "w", seeds=(3,)) if p.row == "top_k=2"]
  pre, ft = pipe.stages
  assert (pre.kind, pre.workdir, ft.kind, ft.workdir) == (
      "pretraining", "w/top_k=2/seed3", "finetune", "w/top_k=2/seed3/finetune")
  assert pre.argv[3:] == ("--config", config, "--workdir", "w/top_k=2/seed3",
                          "--config.objective.top_k=2", "--config.seed=3")
  assert ft.argv[3:] == ("--config", "configs/finetune.py:recipe=maskalign,runlocal=True",
                         "--workdir", "w/top_k=2/seed3/finetune",
                         "--config.init_from=w/top_k=2/seed3", "--config.seed=3")


def test_evaluation_follows_the_rows_student():
  """The fine-tune rebuilds the row's student: its variant picks the recipe's size, a shared
  relative position bias becomes one table per block, drop path stays the recipe's."""
  path = os.path.join(ROOT, "configs", "sweeps", "maskdistill_vs_kd.py")
  sweep = sweep_lib.load(path)
  config = sweep_lib.sweep_config(path, None)
  large = sweep.points[-1]
  assert sweep_lib.evaluation_config(sweep, large, config) == (
      "configs/finetune.py:recipe=maskdistill,variant=L/16")
  assert sweep_lib.forwarded({**large, "student.rel_pos": "shared"}) == {
      "student.layer_scale": 1e-5, "student.rel_pos": "per_layer"}
  sweep_lib.check(sweep, config)  # the forwarded keys are fields of the fine-tune config


def test_print_is_one_pipeline_line_per_row_and_seed(tmp_path, capsys):
  path = write_sweep(tmp_path / "s.py", [1, 2])
  assert sweep_lib.main(["--sweep", path, "--workdir", "w d", "--seeds", "0,1",
                         "--eval_args=--config.total_steps=2", "--", "--config.batch_size=8"]) == 0
  lines = [shlex.split(x) for x in capsys.readouterr().out.splitlines()]
  assert len(lines) == 4
  assert lines[3] == ["python", os.path.relpath(SCRIPT), "--sweep", path, "--workdir", "w d",
                      "--only", "top_k=2", "--seeds", "1", "--eval_args=--config.total_steps=2",
                      "--run", "--", "--config.batch_size=8"]


@pytest.mark.parametrize("text,message", [
    ("METRIC = 'x'\n", "EVALUATION = None; set it to one of"),
    ("EVALUATION = 'finetune'\n", "needs RECIPE"),
    ("EVALUATION = 'linear'\n", "EVALUATION = 'linear'")])
def test_a_sweep_file_states_how_a_row_gets_the_papers_number(tmp_path, text, message):
  path = tmp_path / "s.py"
  path.write_text(f"CONFIG = {MASKALIGN_LOCAL!r}\n{text}"
                  "def sweep():\n  return [{'objective.top_k': 1}]\n")
  r = subprocess.run([sys.executable, SCRIPT, "--sweep", str(path), "--workdir",
                      str(tmp_path / "w"), "--print"], capture_output=True, text=True,
                     timeout=120)
  assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
  assert r.stderr.startswith("error: ") and message in r.stderr


def test_unknown_row_and_bad_seeds_are_refused(tmp_path):
  path = write_sweep(tmp_path / "s.py", [1, 2])
  with pytest.raises(ValueError, match="--only 'top_k=3' is not a row"):
    sweep_lib.main(["--sweep", path, "--workdir", "w", "--only", "top_k=3"])
  with pytest.raises(ValueError, match="repeats a seed"):
    sweep_lib.main(["--sweep", path, "--workdir", "w", "--seeds", "0,0"])


def test_mean_and_sample_spread():
  assert sweep_lib.mean_spread([0.9, 0.92, 0.94]) == (pytest.approx(0.92), pytest.approx(0.02))
  assert sweep_lib.mean_spread([0.5]) == (0.5, None)
  assert sweep_lib.mean_spread([]) == (None, None)


# --------------------------------------------------------------------------------------------
# Real runs: runlocal rows, pretraining and fine-tune, through `sweep.py --run`.
# --------------------------------------------------------------------------------------------
def sweep_cli(*args, timeout=900):
  env = dict(os.environ, XLA_FLAGS="")  # the runs on one CPU device: they compile faster
  r = subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                     timeout=timeout, cwd=ROOT, env=env)
  return r.returncode, r.stdout, r.stderr


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def results_top1(run_dir):
  with open(os.path.join(run_dir, "results.json")) as f:
    return json.load(f)["final"]["eval/top1"]


@pytest.mark.slow
def test_run_then_summarize_reads_what_the_runs_wrote(tmp_path, tiny_vit_teacher_dir):
  """Two rows, each a 4-step runlocal MaskAlign pretraining and a fine-tune from it, and a row
  whose pretraining fails; the summary's fine-tune column is each row's results.json, its loss
  column the pretraining's; the failed row is reported, never fine-tuned."""
  path = write_sweep(tmp_path / "s.py", [1, 2, BAD_ROW])
  work = str(tmp_path / "runs")
  teacher = f"--config.teacher.spec={tiny_vit_teacher_dir}"
  code, out, err = sweep_cli("--sweep", path, "--workdir", work, "--run",
                             "--eval_args=--config.total_steps=2", "--", teacher)
  assert code == 1 and err.strip().splitlines()[-1] == f"NOT FINISHED: {BAD_NAME}", err[-3000:]
  assert not os.path.exists(os.path.join(work, BAD_NAME, "finetune"))
  rows = {k: os.path.join(work, f"top_k={k}") for k in (1, 2)}
  for row in rows.values():  # the fine-tune started from the row's final pretraining step
    with open(os.path.join(row, "finetune", "config.json")) as f:
      assert json.load(f)["init_from"] == row
    assert sorted(os.listdir(os.path.join(row, "checkpoints")))[-1] == "4"
  code, out, err = sweep_cli("--sweep", path, "--workdir", work, "--summarize")
  assert code == 0, err[-3000:]
  lines = out.splitlines()
  assert lines[0] == ("| run | runs done | pretraining loss | fine-tune top-1 (%) | "
                      "paper: fine-tune top-1 (%) |")
  for line, (k, row) in zip(lines[2:], rows.items()):
    loss = [r["loss"] for r in read_jsonl(os.path.join(row, "metrics.jsonl")) if "loss" in r][-1]
    top1 = results_top1(os.path.join(row, "finetune"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[:2] == [f"top_k={k}", "1/1"]
    assert float(cells[2]) == pytest.approx(loss, rel=1e-3)
    assert float(cells[3]) == pytest.approx(100 * top1, abs=0.051)
  assert [c.strip() for c in lines[4].strip("|").split("|")] == [BAD_NAME, "0/1", "-", "-",
                                                                   "85.1"]
  assert os.path.getsize(os.path.join(work, "summary.png")) > 5000
  assert os.path.getsize(os.path.join(work, "losses.png")) > 5000

  # A fine-tune asked for more steps resumes from its checkpoint; the finished pretraining
  # is not entered again (every attempt of a run rewrites its config.json first).
  written = lambda d: os.stat(os.path.join(d, "config.json")).st_mtime_ns
  before = written(rows[1]), written(os.path.join(rows[1], "finetune"))
  code, out, err = sweep_cli("--sweep", path, "--workdir", work, "--run", "--only", "top_k=1",
                             "--eval_args=--config.total_steps=4", "--", teacher)
  assert code == 0, err[-3000:]
  assert "pretraining: done (the finetune started from it)" in out
  assert "finetune: resuming from step 2" in out
  assert written(rows[1]) == before[0] and written(os.path.join(rows[1], "finetune")) > before[1]
  assert sorted(os.listdir(os.path.join(rows[1], "finetune", "checkpoints")))[-1] == "4"
  # Nothing left to do: both stages are skipped.
  code, out, err = sweep_cli("--sweep", path, "--workdir", work, "--run", "--only", "top_k=1",
                             "--eval_args=--config.total_steps=4", "--", teacher)
  assert code == 0 and "finetune: done (step 4, its last)" in out and "starting" not in out


@pytest.mark.slow
def test_seeds_give_mean_and_spread(tmp_path, tiny_vit_teacher_dir):
  """One row twice (seeds 0 and 1, pretraining only: its loss): the summary shows the two
  seeds' mean ± sample standard deviation."""
  path = write_sweep(tmp_path / "s.py", [1], evaluation="loss")
  work = str(tmp_path / "runs")
  code, out, err = sweep_cli("--sweep", path, "--workdir", work, "--run", "--seeds", "0,1",
                             "--", f"--config.teacher.spec={tiny_vit_teacher_dir}")
  assert code == 0, err[-3000:]
  losses = [[r["loss"] for r in read_jsonl(os.path.join(work, "top_k=1", f"seed{s}",
                                                        "metrics.jsonl")) if "loss" in r][-1]
            for s in (0, 1)]
  assert losses[0] != losses[1]  # the seeds differ
  code, out, _ = sweep_cli("--sweep", path, "--workdir", work, "--summarize")
  cells = [c.strip() for c in out.splitlines()[2].strip("|").split("|")]
  mean = sum(losses) / 2
  sd = math.sqrt(sum((v - mean) ** 2 for v in losses))  # n - 1 = 1
  assert cells[:2] == ["top_k=1", "2/2"]
  shown_mean, shown_sd = (float(x) for x in cells[2].split("±"))
  assert shown_mean == pytest.approx(mean, rel=1e-3) and shown_sd == pytest.approx(sd, rel=0.05)


def test_a_stage_knows_its_last_step_from_its_own_arguments(tmp_path):
  """A stage has finished when its last checkpoint is the last step of the config its command
  trains, overrides included."""
  (tmp_path / "checkpoints" / "4").mkdir(parents=True)
  (tmp_path / "checkpoints" / "2").mkdir()
  config = "configs/finetune.py:recipe=maskalign,runlocal=True"
  stage = sweep_lib.Stage("finetune", str(tmp_path), (
      "python", "-m", "mim_jax.main", "--config", config, "--workdir", str(tmp_path),
      "--config.total_steps=7", "--config.init_from=x"))
  assert sweep_lib.finished_step(stage) is None  # step 4 of 7
  assert sweep_lib.finished_step(stage._replace(argv=stage.argv[:-2])) == 4  # runlocal: 4 steps
  assert sweep_lib.finished_step(stage._replace(workdir=str(tmp_path / "none"))) is None
