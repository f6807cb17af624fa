"""The demo at runlocal size: its own teacher (trained, exported, loaded as a transformers
checkpoint), MaskAlign pretraining, the kNN table and the PNGs."""
import json
import os

import pytest
from PIL import Image

from mim_jax import demo
from mim_jax.evaluation import classification


def records(path) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow
def test_demo_runlocal(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("MIM_JAX_CACHE", str(tmp_path / "cache"))
  table = demo.run(str(tmp_path / "run"), runlocal=True)
  teacher_dir = tmp_path / "cache" / "demo_teacher_local"
  assert (teacher_dir / "model.safetensors").exists() and (teacher_dir / "config.json").exists()
  assert len(table) == 5
  run = tmp_path / "run"
  # MaskAlign pretraining learns in its 4 runlocal steps (measured: loss 2.35 -> 1.70)
  losses = [r["loss"] for r in records(run / "metrics.jsonl")]
  assert losses[-1] < 0.85 * losses[0], losses
  # every kNN row's features carry the digits (chance 10%; measured 63-76%)
  knn = {k: v for k, v in table.items() if k.endswith(" kNN")}
  assert len(knn) == 3 and min(knn.values()) > 0.4, knn
  # the fine-tuned column is what the two fine-tune runs measured...
  for row, sub in (("random-init student", "finetune_random"),
                   ("MaskAlign student", "finetune_pretrained")):
    assert table[f"{row} fine-tuned"] == classification.read_results(str(run / sub))["final"][
        "eval/top1"]
  # ...and they differ in where they start: the same config and seed, so only the pretrained
  # student given by init_from can make their first records differ
  first = {sub: records(run / sub / "metrics.jsonl")[0]
           for sub in ("finetune_random", "finetune_pretrained")}
  assert first["finetune_random"]["param_norm"] != first["finetune_pretrained"]["param_norm"]
  printed = capsys.readouterr().out
  assert "kNN" in printed and "fine-tuned" in printed and "MaskAlign student" in printed
  for name in ("loss_curves.png", "alignment_matrix.png", "cls_attention.png"):
    with Image.open(run / name) as im:
      assert im.size[0] > 100 and im.size[1] > 100
  # a second call reuses the exported teacher and resumes the finished run
  mtime = os.path.getmtime(teacher_dir / "model.safetensors")
  demo.run(str(run), runlocal=True)
  assert os.path.getmtime(teacher_dir / "model.safetensors") == mtime


def test_the_demo_spec_is_resolved_by_the_entry_points_only(monkeypatch, tiny_vit_teacher_dir):
  """`resolve_teachers` replaces each "demo" of teacher.spec by the demo teacher's directory
  (the runlocal one for a runlocal config) and leaves the rest; below it "demo" is no teacher."""
  from configs import maskalign_b16_clip_b16, mrmae_b16_clip_b16
  from mim_jax import assembly, teachers
  asked = []
  monkeypatch.setattr(demo, "ensure_teacher",
                      lambda runlocal=False: asked.append(runlocal) or tiny_vit_teacher_dir)
  two = mrmae_b16_clip_b16.get_config("runlocal=True,teacher=clip_b16+dino_b16")
  two.teacher.spec = "clip_b16,demo"
  resolved = demo.resolve_teachers(two)
  assert resolved.teacher.spec == f"clip_b16,{tiny_vit_teacher_dir}" and asked == [True]
  assert two.teacher.spec == "clip_b16,demo"  # the caller's config is left as it was
  full = maskalign_b16_clip_b16.get_config()
  assert demo.resolve_teachers(full) is full and asked == [True]  # no demo: nothing trained
  local = maskalign_b16_clip_b16.get_config("runlocal=True")
  assert local.teacher.spec == "demo"
  assert assembly.load_teacher(demo.resolve_teachers(local)).name == tiny_vit_teacher_dir
  with pytest.raises(FileNotFoundError, match="'demo' is neither a checkpoint directory"):
    teachers.load("demo")
