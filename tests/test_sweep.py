"""Sweep launcher (names, commands, quoting, key checks), MaskAlign sweeps, MAE/MR-MAE configs."""
import glob
import os
import shlex
import subprocess
import sys
import types

import pytest

from mim_jax.objectives import mae, mrmae
from mim_jax.teachers.teacher import STUDENT_MEAN, STUDENT_STD
from mim_jax.tools import config_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sweep_lib = config_file.load_module(os.path.join(ROOT, "launch", "sweep.py"))
MASKALIGN = os.path.join(ROOT, "configs", "maskalign_b16_clip_b16.py")
TOP_K = os.path.join(ROOT, "configs", "sweeps", "maskalign_top_k.py")
RATIO = os.path.join(ROOT, "configs", "sweeps", "maskalign_mask_ratio.py")


def test_maskalign_sweeps_match_the_papers_tables():
  top_k = sweep_lib.load_sweep(TOP_K)
  assert sweep_lib.run_names(top_k) == [
      "alignment=dynamic,top_k=1", "alignment=dynamic,top_k=3", "alignment=dynamic,top_k=5",
      "alignment=dynamic,top_k=7", "alignment=layerwise,top_k=1", "alignment=layerwise,top_k=5"]
  assert all(p["objective.align_cls"] is False for p in top_k)
  ratio = sweep_lib.load_sweep(RATIO)
  assert [p["mask.ratio"] for p in ratio] == [0.0, 0.2, 0.4, 0.6, 0.7, 0.75, 0.8, 0.9, 0.7]
  assert [p["mask.kind"] for p in ratio] == ["attentive"] * 8 + ["random"]
  for p in ratio:  # the same budget of visible tokens as 200 epochs at 70%
    assert p["total_epochs"] * (1 - p["mask.ratio"]) == pytest.approx(60.0)
  # Every key is a field of the MaskAlign config (a misspelt one would raise).
  sweep_lib.check_points(MASKALIGN, top_k + ratio)


def printed(capsys, *args):
  assert sweep_lib.main(list(args)) == 0
  return [shlex.split(line) for line in capsys.readouterr().out.splitlines()]


def test_print_commands(capsys):
  lines = printed(capsys, "--config", MASKALIGN, "--sweep", TOP_K, "--workdir", "runs/topk",
                  "--print", "--", "--config.batch_size=512")
  assert len(lines) == 6
  assert lines[4] == [
      "python", os.path.relpath(os.path.join(ROOT, "launch", "sweep.py")), "--sweep", TOP_K,
      "--workdir", "runs/topk", "--only", "alignment=layerwise,top_k=1", "--config", MASKALIGN,
      "--run", "--", "--config.batch_size=512"]
  sweep = sweep_lib.load(TOP_K)
  pre, ft = sweep_lib.pipelines(sweep, MASKALIGN, "runs/topk", extra=["--config.batch_size=512"])[
      4].stages
  assert pre.argv == (
      "python", "-m", "mim_jax.main", "--config", MASKALIGN,
      "--workdir", "runs/topk/alignment=layerwise,top_k=1",
      "--config.objective.alignment=layerwise", "--config.objective.top_k=1",
      "--config.objective.align_cls=False", "--config.batch_size=512")
  assert ft.argv[3:] == ("--config", "configs/finetune.py:recipe=maskalign", "--workdir",
                         "runs/topk/alignment=layerwise,top_k=1/finetune",
                         "--config.init_from=runs/topk/alignment=layerwise,top_k=1")


def test_quoting_names_and_config_args(tmp_path, capsys):
  sweep = tmp_path / "odd.py"
  sweep.write_text(
      "EVALUATION = 'loss'\n"
      "def sweep():\n"
      "  return [{'objective.fusion_layers': (3, 7, 11), 'teacher.spec': '/ckpt/my clip'},\n"
      "          {'objective.fusion_layers': (1,), 'teacher.spec': 'clip_b16'},\n"
      "          {'objective.fusion_layers': (), 'teacher.spec': 'clip_b16'}]\n")
  config = os.path.join(ROOT, "configs", "mrmae_b16_clip_b16.py") + ":runlocal=True"
  lines = printed(capsys, "--config", config, "--sweep", str(sweep), "--workdir", "w d")
  assert lines[0][6:10] == ["--only", "fusion_layers=3-7-11,spec=_ckpt_my_clip", "--config",
                            config]
  argvs = [p.stages[0].argv for p in sweep_lib.pipelines(sweep_lib.load(str(sweep)), config,
                                                          "w d")]
  assert argvs[0][4] == config
  assert argvs[0][5:] == ("--workdir", "w d/fusion_layers=3-7-11,spec=_ckpt_my_clip",
                          "--config.objective.fusion_layers=(3, 7, 11)",
                          "--config.teacher.spec=/ckpt/my clip")
  assert argvs[1][6:8] == ("w d/fusion_layers=1,spec=clip_b16",
                           "--config.objective.fusion_layers=(1,)")
  assert argvs[2][6:8] == ("w d/fusion_layers=none,spec=clip_b16",
                           "--config.objective.fusion_layers=()")


def test_names_clash_and_single_point():
  assert sweep_lib.run_names([{"mask.ratio": 0.5, "objective.top_k": 2}]) == [
      "ratio=0.5,top_k=2"]
  assert sweep_lib.run_names([{"mask.ratio": 0.1, "objective.ratio": 1},
                              {"mask.ratio": 0.2, "objective.ratio": 2}]) == [
                                  "mask.ratio=0.1,objective.ratio=1",
                                  "mask.ratio=0.2,objective.ratio=2"]
  with pytest.raises(ValueError, match="share the run names"):
    sweep_lib.run_names([{"a.b": 1, "c": "x/y"}, {"a.b": 1, "c": "x_y"}])


def test_misspelt_key_is_refused(tmp_path):
  sweep = tmp_path / "typo.py"
  sweep.write_text("EVALUATION = 'loss'\n"
                   "def sweep():\n  return [{'objective.topk': 1}, {'objective.topk': 3}]\n")
  with pytest.raises(KeyError, match="objective.top_k"):
    sweep_lib.main(["--config", MASKALIGN, "--sweep", str(sweep), "--workdir", "w"])


# --------------------------------------------------------------------------------------------
# The MAE / MR-MAE configs build, and their models too.
# --------------------------------------------------------------------------------------------
def load(name, arg=None):
  spec = os.path.join(ROOT, "configs", name) + (f":{arg}" if arg else "")
  return config_file.load(spec)


def test_mae_configs():
  c = load("mae_b16.py")
  assert c.method == "mae" and c.teacher.spec is None and c.batch_size == 4096
  assert (c.mask.kind, c.mask.ratio, c.total_epochs, c.warmup_epochs) == ("random", 0.75, 800, 40)
  assert c.objective.decoder.to_dict() == dict(width=512, depth=8, heads=16, mlp_dim=2048,
                                               attn_drop=0.0)
  r = load("mae_robust_b16.py")
  assert r.objective.decoder.attn_drop == 0.3 and tuple(r.data.crop_scale) == (0.5, 1.0)
  # the main B recipe has no mid-level mask tokens (its Table 5 case study adds them)
  assert (r.objective.mid_mask_ratio, r.objective.mid_mask_depth) == (0.0, 8)
  assert tuple(load("mae_robust_b16.py", "variant=L/16").data.crop_scale) == (0.2, 1.0)
  local = load("mae_b16.py", "runlocal=True")
  assert local.student.variant == "nano/4" and local.data.image_size == 16
  model = mae.make_model(local)
  assert model.decoder.grid == (4, 4) and model.decoder.out_dim == 48
  assert model.mid_mask_count == 0
  robust_config = load("mae_robust_b16.py", "runlocal=True")
  assert tuple(robust_config.data.crop_scale) == (0.5, 1.0)
  robust = mae.make_model(robust_config)
  assert (robust.mid_mask_count, robust.mid_depth, robust.decoder.attn_drop) == (0, 1, 0.3)
  robust_config.objective.mid_mask_ratio = 0.25
  assert mae.make_model(robust_config).mid_mask_count == 4


def test_mrmae_config():
  c = load("mrmae_b16_clip_b16.py")
  assert c.method == "mrmae" and c.teacher.spec == "clip_b16" and c.mask.kind == "focused"
  assert (c.objective.mimic_weight, c.objective.recon_weight) == (0.5, 0.5)
  assert c.objective.num_fusion == 3 and c.objective.fusion_layers is None
  assert c.optim.base_lr * c.batch_size / 256 == pytest.approx(1.5e-4)  # the paper's max lr
  model = mrmae.make_model(c, types.SimpleNamespace(width=24, depth=2))
  assert model.fusion_layers == (3, 7, 11)
  local = load("mrmae_b16_clip_b16.py", "runlocal=True")
  model = mrmae.make_model(local, types.SimpleNamespace(width=24, depth=2))
  assert model.fusion_layers == (0, 1) and model.teacher_width == 24


def test_student_constants_match_the_pipeline():
  from mim_jax.data import preprocess  # pylint: disable=import-outside-toplevel
  assert tuple(STUDENT_MEAN) == tuple(preprocess.IMAGENET_MEAN)
  assert tuple(STUDENT_STD) == tuple(preprocess.IMAGENET_STD)


SWEEPS = sorted(glob.glob(os.path.join(ROOT, "configs", "sweeps", "*.py")))


@pytest.mark.parametrize("path", SWEEPS, ids=os.path.basename)
def test_every_sweep_file_names_its_config_and_the_papers_numbers(path):
  sweep = sweep_lib.load(path)
  assert sweep.metric and sweep.evaluation in sweep_lib.EVALUATIONS
  assert len(sweep.paper) == len(sweep.points)
  assert any(v is not None for v in sweep.paper) or "no number" in sweep.module.__doc__
  assert len(set(sweep.names)) == len(sweep.points)
  # Every key a field of the sweep's config and every value of its type, and every row's
  # evaluation config built with what it is given (raises otherwise).
  sweep_lib.check(sweep, sweep_lib.sweep_config(path, None))


def test_paper_numbers_of_the_tables():
  numbers = lambda name: sweep_lib.load_paper(os.path.join(ROOT, "configs", "sweeps", name))[1]
  assert numbers("maskalign_top_k.py") == [84.9, 85.1, 85.3, 85.1, 84.8, 85.1]
  assert numbers("maskalign_adaptation.py") == [85.4, 85.3, 85.2, 84.7, 84.3]
  assert numbers("maskalign_teachers.py") == [83.9, 85.3, 85.6, 86.5, 87.4]
  assert numbers("maskdistill_target_layers.py") == [84.5, 84.4, 84.3, 85.0, 85.0, 85.1]
  assert numbers("maskdistill_vs_kd.py") == [85.3, 85.0, 85.2, 85.5, 85.4, 86.8]
  assert numbers("mrmae_tricks.py") == [83.0, 84.7, 84.9, 85.0, 84.9, 85.5]
  assert numbers("mrmae_methods.py") == [83.6, None, 85.8, 85.8, 85.0]
  assert numbers("mrmae_teachers.py") == [84.0, 85.0, 83.8]
  assert numbers("mae_robust_targets.py") == [81.99, 83.25, 83.28, 84.70, 85.29, 85.47]
  literal = sweep_lib.load_sweep(os.path.join(ROOT, "configs", "sweeps",
                                               "maskalign_mask_ratio_200ep.py"))
  assert {p["total_epochs"] for p in literal} == {200.0}


def test_wrong_value_type_is_refused(tmp_path):
  sweep = tmp_path / "bad.py"
  sweep.write_text("EVALUATION = 'loss'\ndef sweep():\n  return [{'objective.top_k': 'five'}]\n")
  with pytest.raises(TypeError, match="objective.top_k='five'"):
    sweep_lib.main(["--config", MASKALIGN, "--sweep", str(sweep), "--workdir", "w"])


def test_bad_input_is_one_error_line_before_writing(tmp_path):
  script = os.path.join(ROOT, "launch", "sweep.py")
  r = subprocess.run([sys.executable, script, "--sweep", TOP_K, "--workdir",
                      str(tmp_path / "none"), "--summarize"], capture_output=True, text=True,
                     timeout=120)
  assert r.returncode != 0 and not (tmp_path / "none").exists()
  assert r.stderr.strip().splitlines() == [
      f"error: No run of {TOP_K} under {tmp_path / 'none'}: run the sweep first (--run, or the "
      "--print lines) or pass its --workdir."]
