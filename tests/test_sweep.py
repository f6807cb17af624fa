"""Sweep launcher (names, commands, quoting, key checks), MaskAlign sweeps, MAE/MR-MAE configs."""
import glob
import os
import shlex
import subprocess
import sys
import types

import pytest

from mim_jax.objectives import mae, mrmae
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


# The papers' numbers, written once here from the papers' text (/work/shared/papers/, outside
# the repository): per sweep file, the table, the settings every row shares, and each row's own
# settings with the number the paper prints. Settings are values of the run's resolved config
# (the sweep's config with the row's overrides), so a row that overrides the wrong key, or a key
# whose default changed, no longer matches. The MaskAlign, MR-MAE and robust-MAE text copies
# have no page breaks: their tables are cited by number and section.
_MA = "MaskAlign, 'Stare at What You See' (Xue et al.), Sec. 4"
_MD = "MaskDistill, 'A Unified View of Masked Image Modeling' (TMLR 03/2023)"
_MR = "MR-MAE, 'Mimic before Reconstruct' (Sec. 4)"
_RM = "Robust MAE, 'A robustly and effectively optimized pre-training approach for MAE'"
_MA_TOP_K = [({"objective.alignment": "dynamic", "objective.top_k": 1}, 84.9),
             ({"objective.alignment": "dynamic", "objective.top_k": 3}, 85.1),
             ({"objective.alignment": "dynamic", "objective.top_k": 5}, 85.3),
             ({"objective.alignment": "dynamic", "objective.top_k": 7}, 85.1),
             ({"objective.alignment": "layerwise", "objective.top_k": 1}, 84.8),
             ({"objective.alignment": "layerwise", "objective.top_k": 5}, 85.1)]
_MA_RATIO = [({"mask.kind": "attentive", "mask.ratio": r}, n) for r, n in (
    (0.0, 84.9), (0.2, 85.1), (0.4, 85.2), (0.6, 85.3), (0.7, 85.3), (0.75, 85.1), (0.8, 85.1),
    (0.9, 84.4))] + [({"mask.kind": "random", "mask.ratio": 0.7}, 85.1)]
# Tables 3-5 are "under w/o [CLS] token setting" (text beside Table 6).
_MA_SHARED = {"student.variant": "B/16", "teacher.spec": "clip_b16", "objective.align_cls": False}
_MA_TOP5 = {"objective.alignment": "dynamic", "objective.top_k": 5}
_ATTENTIVE70 = {"mask.kind": "attentive", "mask.ratio": 0.7}
_MR_TRICK = {"objective.recon_weight": 0.5, "objective.mimic_weight": 0.5}
# MR-MAE Sec. 4.1 "Experiment Setups": batch 1,024, weight decay 0.05, peak lr 1.5e-4, 80 of 400
# epochs warming up; every row of its Tables 1, 3 and Figure 4 (MAE baselines included) runs it.
_MR_RECIPE = {"batch_size": 1024, "optim.base_lr": 1.5e-4 * 256 / 1024,
              "optim.weight_decay": 0.05, "warmup_percent": 80 / 400}
# MaskDistill's default (Sec. 3, p. 4, Eq. 3; Sec. 4.1, p. 5; Sec. 4.7, p. 9): 40% block masks,
# Smooth-l1 on LN(teacher feature) of the last layer.
_MD_RECIPE = {"mask.kind": "block", "mask.ratio": 0.4, "objective.loss": "smooth_l1",
              "objective.target_norm": "ln", "objective.target_layers": "last"}
# MaskDistill's Table 11 (p. 16), by student size: stoch. depth and layer scale.
_MD_SIZE = {v: {"student.variant": v, "student.drop_path": dp, "student.layer_scale": ls}
            for v, dp, ls in (("B/16", 0.1, 0.1), ("L/16", 0.2, 1e-5), ("H/14", 0.25, 1e-5))}
# Table 2's "Rel. Pos." tick: shared relative position bias, as the analysis paper (same group)
# lists for its MaskDistill pretraining column "BEiT v2/Base Size" (its Appendix D, Table 1).
# Its cross: Sec. 3 (p. 4) "add the learnable positional embeddings".
_MD_REL = {"student.rel_pos": "shared"}
_MD_NO_REL = {"student.rel_pos": "none", "student.posemb": "learned"}
# The analysis paper's better baseline: CLIP ViT-B/16 fine-tuned directly, its Appendix D,
# Table 1, column CLIP/ViT-B/16 (50 epochs, 10 warmup, batch 1024, Adam beta (0.9, 0.95),
# peak lr 5e-5 at batch 1024, min lr 1e-7, layer decay 0.6, weight decay 0.05, no clipping,
# stoch. depth 0, label smoothing 0.1, per-block relative position, min crop scale 0.08).
_CLIP_FT = {"student.variant": "B/16", "init_from": "clip_b16", "total_epochs": 50.0,
            "warmup_epochs": 10.0, "batch_size": 1024, "optim.b1": 0.9, "optim.b2": 0.95,
            "optim.base_lr": 5e-5 * 256 / 1024, "optim.min_lr": 1e-7, "optim.layer_decay": 0.6,
            "optim.weight_decay": 0.05, "optim.clip_norm": None, "student.drop_path": 0.0,
            "objective.label_smoothing": 0.1, "student.rel_pos": "per_layer",
            "data.crop_scale": (0.08, 1.0)}
_FREEZE_PATCH_PROJECTION = {"optim.frozen": ("student/patch_embed",)}  # its last row: ✓
_AN = "Masked-distillation analysis paper (no page numbers in the text copy), Sec. 4"
PAPER_TABLES = {
    "maskalign_top_k.py": (f"{_MA}, Table 3", {**_MA_SHARED, **_ATTENTIVE70,
                                                "total_epochs": 200.0}, _MA_TOP_K),
    "maskalign_mask_ratio.py": (f"{_MA}, Table 4", {**_MA_SHARED, **_MA_TOP5}, _MA_RATIO),
    "maskalign_mask_ratio_200ep.py": (f"{_MA}, Table 4", {**_MA_SHARED, **_MA_TOP5,
                                                           "total_epochs": 200.0}, _MA_RATIO),
    "maskalign_teachers.py": (
        f"{_MA}, Table 5", {**_MA_TOP5, **_ATTENTIVE70, "objective.align_cls": False,
                            "total_epochs": 200.0},
        [({"student.variant": "B/16", "teacher.spec": "dino_b16"}, 83.9),
         ({"student.variant": "B/16", "teacher.spec": "clip_b16"}, 85.3),
         ({"student.variant": "B/16", "teacher.spec": "clip_l14"}, 85.6),
         ({"student.variant": "L/16", "teacher.spec": "clip_b16"}, 86.5),
         ({"student.variant": "L/16", "teacher.spec": "clip_l14"}, 87.4)]),
    "maskalign_adaptation.py": (
        f"{_MA}, Table 6", {"student.variant": "B/16", "teacher.spec": "clip_b16", **_MA_TOP5,
                            **_ATTENTIVE70, "total_epochs": 200.0},
        [({"objective.adaptor": "linear", "objective.target_norm": "ln",
           "objective.align_cls": True}, 85.4),
         ({"objective.adaptor": "linear", "objective.target_norm": "ln",
           "objective.align_cls": False}, 85.3),
         ({"objective.adaptor": "mlp", "objective.target_norm": "ln",
           "objective.align_cls": False}, 85.2),
         ({"objective.adaptor": "linear", "objective.target_norm": "bn",
           "objective.align_cls": False}, 84.7),
         ({"objective.adaptor": "linear", "objective.target_norm": "none",
           "objective.align_cls": False}, 84.3)]),
    # The demo's 4-layer teacher: K = 1 is the paper's K = 1; K = 2 of 4 stands for its best
    # K = 5 of 12 (configs/sweeps/demo_top_k.py); K = 4 has no paper row.
    "demo_top_k.py": (
        f"{_MA}, Table 3 (rows at the demo's depth)", {"objective.align_cls": False},
        [({"objective.alignment": "dynamic", "objective.top_k": 1}, 84.9),
         ({"objective.alignment": "dynamic", "objective.top_k": 2}, 85.3),
         ({"objective.alignment": "layerwise", "objective.top_k": 1}, 84.8),
         ({"objective.alignment": "layerwise", "objective.top_k": 2}, 85.1)]),
    "maskdistill_vs_kd.py": (
        f"{_MD}, Table 5, p. 6", {"teacher.spec": "clip_b16"},
        [({"student.variant": v, "mask.ratio": r, "total_epochs": e}, n) for v, r, e, n in (
            ("B/16", 0.0, 300.0, 85.3), ("B/16", 0.4, 300.0, 85.0), ("B/16", 0.0, 800.0, 85.2),
            ("B/16", 0.4, 800.0, 85.5), ("L/16", 0.0, 300.0, 85.4), ("L/16", 0.4, 300.0, 86.8))]),
    "maskdistill_norm_loss.py": (
        f"{_MD}, Table 9, p. 10", {"total_epochs": 300.0},
        [({"teacher.spec": t, "objective.loss": loss, "objective.target_norm": norm}, n)
         for t, loss, norm, n in (
             ("dino_b16", "mse", "none", 84.3), ("dino_b16", "cosine", "l2", 84.5),
             ("dino_b16", "smooth_l1", "ln", 84.5), ("clip_b16", "mse", "none", 84.6),
             ("clip_b16", "cosine", "l2", 84.9), ("clip_b16", "smooth_l1", "bn", 84.9),
             ("clip_b16", "smooth_l1", "ln", 85.0))]),
    "maskdistill_target_layers.py": (
        f"{_MD}, Table 10, p. 10", {"total_epochs": 300.0},
        [({"teacher.spec": t, "objective.target_layers": layers}, n) for t, layers, n in (
            ("dino_b16", "last", 84.5), ("dino_b16", "last3", 84.4), ("dino_b16", "last6", 84.3),
            ("clip_b16", "last", 85.0), ("clip_b16", "last3", 85.0), ("clip_b16", "last6", 85.1))]),
    # Figure 2 (p. 9) prints curves only; its default point is Table 9's CLIP smooth-l1 LN row.
    "maskdistill_mask_type.py": (
        f"{_MD}, Figure 2, p. 9 / Table 9, p. 10",
        {"teacher.spec": "clip_b16", "total_epochs": 300.0},
        [({"mask.kind": "block", "mask.ratio": 0.4}, 85.0)]),
    "mrmae_tricks.py": (
        f"{_MR}, Table 3", {**_MR_RECIPE, "teacher.spec": "clip_b16", "total_epochs": 200.0},
        [({"student.variant": "B/16", "mask.kind": "random", "objective.num_fusion": 1,
           "objective.mimic_weight": 0.0, "objective.recon_weight": 1.0}, 83.0),
         ({"student.variant": "B/16", "mask.kind": "random", "objective.num_fusion": 1,
           **_MR_TRICK}, 84.7),
         ({"student.variant": "B/16", "mask.kind": "focused", "objective.num_fusion": 1,
           **_MR_TRICK}, 84.9),
         ({"student.variant": "B/16", "mask.kind": "focused", "objective.num_fusion": 3,
           **_MR_TRICK}, 85.0),
         ({"student.variant": "B/16", "mask.kind": "focused", "objective.num_fusion": 3,
           "objective.mimic_weight": 1.0, "objective.recon_weight": 0.0}, 84.9),
         ({"student.variant": "ConvB/16", "student.stage_skips": True, "mask.kind": "focused",
           "objective.num_fusion": 3, **_MR_TRICK}, 85.5)]),
    "mrmae_methods.py": (
        f"{_MR}, Table 1 and Figure 3 (800 epochs)", _MR_RECIPE,
        [({"student.variant": "B/16", "mask.kind": "random", "objective.mimic_weight": 0.0,
           "total_epochs": 1600.0}, 83.6),
         ({"student.variant": "ConvB/16", "mask.kind": "focused", **_MR_TRICK,
           "objective.num_fusion": 3, "total_epochs": 400.0}, 85.8),
         ({"student.variant": "ConvB/16", "mask.kind": "focused", **_MR_TRICK,
           "objective.num_fusion": 3, "total_epochs": 800.0}, 85.8),
         ({"student.variant": "ConvB/16", "mask.kind": "random", "objective.mimic_weight": 0.0,
           "total_epochs": 1600.0}, 85.0)]),
    # "CLIP/DINO (Sep.)" (85.5) is two models ensembled: no row.
    "mrmae_teachers.py": (
        f"{_MR}, Figure 4", {**_MR_RECIPE, "student.variant": "B/16"},
        [({"teacher.spec": "dino_b16"}, 84.0), ({"teacher.spec": "clip_b16"}, 85.0),
         ({"teacher.spec": "clip_b16,dino_b16"}, 83.8)]),
    "mae_robust_targets.py": (
        f"{_RM}, Table 1", {"total_epochs": 800.0},
        [({"student.variant": v, "objective.global_norm": g}, n) for v, g, n in (
            ("B/16", "none", 81.99), ("B/16", "global_rgb", 83.25), ("B/16", "global_patch", 83.28),
            ("L/16", "none", 84.70), ("L/16", "global_rgb", 85.29),
            ("L/16", "global_patch", 85.47))]),
    # "MAE (our impl.)": no drop edge in the decoder (attn_drop 0); "Ours": drop edge 0.3.
    "mae_robust_main.py": (
        f"{_RM}, Tables 2 and 5", {"total_epochs": 800.0},
        [({"student.variant": "B/16", "objective.decoder.attn_drop": 0.0,
           "objective.mid_mask_ratio": 0.0}, 83.3),
         ({"student.variant": "B/16", "objective.decoder.attn_drop": 0.3,
           "objective.mid_mask_ratio": 0.0}, 83.6),
         ({"student.variant": "B/16", "objective.decoder.attn_drop": 0.3,
           "objective.mid_mask_ratio": 0.25}, 83.5),
         ({"student.variant": "L/16", "objective.decoder.attn_drop": 0.0,
           "objective.mid_mask_ratio": 0.0}, 85.3),
         ({"student.variant": "L/16", "objective.decoder.attn_drop": 0.3,
           "objective.mid_mask_ratio": 0.0}, 85.6)]),
    # Sec. 3.2: "each variant is pre-trained for 100 epochs"; Sec. 4 "Pre-training Setup": 75% of
    # the patches masked. Figure 2 draws loss curves and prints no number: no row.
    "mae_robust_loss_curves.py": (f"{_RM}, Figure 2 (Sec. 3.2)",
                                  {"total_epochs": 100.0, "mask.ratio": 0.75}, []),
    "maskdistill_rel_pos.py": (
        f"{_MD}, Table 2, p. 5 (its MaskDistill rows)", {**_MD_RECIPE, "teacher.spec": "clip_b16"},
        [({**_MD_SIZE["B/16"], **_MD_NO_REL, "total_epochs": 300.0}, 84.9),
         ({**_MD_SIZE["B/16"], **_MD_REL, "total_epochs": 300.0}, 85.0),
         ({**_MD_SIZE["B/16"], **_MD_REL, "total_epochs": 800.0}, 85.5),
         ({**_MD_SIZE["L/16"], **_MD_REL, "total_epochs": 300.0}, 86.8),
         ({**_MD_SIZE["L/16"], **_MD_REL, "total_epochs": 800.0}, 87.1)]),
    # Sec. 4.1 (p. 5): the CLIP ViT-L/14 teacher sees 196 x 196 (a 14 x 14 grid, the student's).
    "maskdistill_clip_l14.py": (
        f"{_MD}, Table 3, p. 5", {**_MD_RECIPE, **_MD_REL, "teacher.spec": "clip_l14",
                                  "teacher.resize_to_student": True, "total_epochs": 300.0},
        [(_MD_SIZE["B/16"], 85.3), (_MD_SIZE["L/16"], 87.6), (_MD_SIZE["H/14"], 88.3)]),
    # #6 CLIP* (official, private 400M) and #9 DINO (official, ImageNet-1k): both ViT-Base
    # teachers (caption); the other rows' teachers are not loadable here (see the sweep file).
    "maskdistill_teachers.py": (
        f"{_MD}, Table 8, p. 9", {**_MD_RECIPE, **_MD_SIZE["B/16"], "total_epochs": 300.0},
        [({"teacher.spec": "clip_b16"}, 85.0), ({"teacher.spec": "dino_b16"}, 84.5)]),
    # Figure 2(b) draws linear-probe curves only (ticks 0.2-0.8): no row.
    "maskdistill_mask_type_probe.py": (f"{_MD}, Figure 2(b), p. 9",
                                       {"teacher.spec": "clip_b16", "total_epochs": 300.0}, []),
    # Figure 8b draws the lr curves; the text (Sec. 4, "Masked Distillation smooths the loss
    # landscape") gives CLIP's "84.8% as opposed to 82.9%" at Appendix D's peak lr 5e-5.
    "analysis_lr.py": (f"{_AN}, Figure 8b and Appendix D, Table 1",
                       {**_CLIP_FT, **_FREEZE_PATCH_PROJECTION},
                       [({"optim.lr": 5e-5}, 84.8)]),
    # Figure 8c draws top-1 against 1..11 frozen blocks (12: linear probe) without numbers; 0
    # frozen blocks is the baseline recipe itself (frozen patch projection only): 84.8.
    "analysis_frozen_blocks.py": (f"{_AN}, Figure 8c and Appendix D, Table 1", _CLIP_FT,
                                  [(_FREEZE_PATCH_PROJECTION, 84.8)]),
}


def row_configs(path):
  """The resolved config of each row of a sweep file: its config with the row's overrides."""
  spec = sweep_lib.sweep_config(path, None)
  configs = []
  for point in sweep_lib.load_sweep(path):
    config = config_file.load(spec)
    for key, value in point.items():
      parent, _, leaf = key.rpartition(".")
      (config_file.get_dotted(config, parent) if parent else config)[leaf] = value
    configs.append(config)
  return configs


def has_settings(config, settings) -> bool:
  def same(a, b):
    return tuple(a) == tuple(b) if isinstance(a, (list, tuple)) else a == b
  return all(same(config_file.get_dotted(config, k), v) for k, v in settings.items())


@pytest.mark.parametrize("path", SWEEPS, ids=os.path.basename)
def test_paper_numbers_of_the_tables(path):
  """Each paper row is run by exactly one sweep row, whose paper() number is the paper's; every
  number a sweep file shows comes from such a row; every row has the table's shared settings."""
  name = os.path.basename(path)
  assert name in PAPER_TABLES, f"{name}: pin its paper's numbers in PAPER_TABLES (table cited)"
  where, shared, rows = PAPER_TABLES[name]
  configs = row_configs(path)
  numbers = sweep_lib.load_paper(path)[1]
  assert [i for i, c in enumerate(configs) if not has_settings(c, shared)] == [], (where, shared)
  matched = set()
  for settings, number in rows:
    runs = [i for i, c in enumerate(configs) if has_settings(c, settings)]
    assert len(runs) == 1, f"{where}: row {settings} is run by sweep rows {runs}"
    assert numbers[runs[0]] == number, (where, settings, numbers[runs[0]], number)
    matched.add(runs[0])
  shown = {i for i, n in enumerate(numbers) if n is not None}
  assert shown == matched, f"{where}: sweep rows {sorted(shown - matched)} show a number no " \
                           f"paper row gives"


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
