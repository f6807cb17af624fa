r"""The demo: MaskAlign on the digits dataset, end to end on a CPU in a few minutes.

  bash launch/local.sh demo [--workdir runs/demo] [--steps N]

1. builds the digits dataset (TFDS, from scikit-learn's bundled digits; no download);
2. trains the demo's teacher through the same train loop (classification objective) and exports
   it in the transformers ViTModel format (cached in $MIM_JAX_CACHE, default ~/.cache/mim_jax);
3. pretrains a MaskAlign student from that teacher (`configs/demo.py`), resuming if interrupted;
4. fine-tunes the pretrained student on the digits, and a random-init student with the same
   budget (`configs/demo.py:get_finetune_config`);
5. prints kNN and fine-tuned top-1 on held-out digits for the random-init student, the teacher
   (kNN) and the pretrained student, and writes PNGs: loss curves, the learned alignment matrix
   and CLS attention maps.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys

from mim_jax import console  # noqa: E402  (importing the package sets the env defaults)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import flax.linen as nn  # noqa: E402
import numpy as np  # noqa: E402
import ml_collections  # noqa: E402
from absl import logging  # noqa: E402

from mim_jax import config as config_lib  # noqa: E402
from mim_jax import export, plots, train  # noqa: E402
from mim_jax.data import input_pipeline  # noqa: E402
from mim_jax.data.normalization import STUDENT_MEAN, STUDENT_STD  # noqa: E402
from mim_jax.evaluation import classification, features  # noqa: E402
from mim_jax.objectives import evaluators  # noqa: E402

# `teacher.spec` naming the demo's own teacher (the runlocal configs use it): the entry points
# turn it into the cached checkpoint directory (`resolve_teachers`) before a run is assembled.
DEMO_SPEC = "demo"


def cache_dir() -> str:
  return os.environ.get("MIM_JAX_CACHE", os.path.expanduser("~/.cache/mim_jax"))


def ensure_teacher(runlocal: bool = False) -> str:
  """The demo teacher's transformers checkpoint directory, trained and exported on first use."""
  from configs import classify_digits  # pylint: disable=import-outside-toplevel
  name = "demo_teacher_local" if runlocal else "demo_teacher"
  out = os.path.join(cache_dir(), name)
  if os.path.exists(os.path.join(out, "model.safetensors")):
    return out
  config = classify_digits.get_config("runlocal=True" if runlocal else None)
  logging.info("Training the demo teacher (%s, %d steps) in %s", config.student.variant,
               config.total_steps, out + "_run")
  result = train.train_and_evaluate(config, out + "_run")
  tmp = out + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  export.export_hf(jax.device_get(result.state.params["student"]),
                   result.setup.model_student(), tmp)
  os.replace(tmp, out)  # atomic: a half-written export is never taken for a teacher
  return out


def resolve_teachers(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config`, or a copy whose `teacher.spec` has each "demo" replaced by the demo teacher's
  directory (`ensure_teacher`, the runlocal one for a runlocal config): what every entry point
  (`main`, `aot`, the analysis CLI, the demo) does before assembling a run, so that below them a
  teacher spec is a zoo name or a checkpoint directory."""
  spec = config.teacher.get("spec") if config.get("teacher") else None
  specs = config_lib.teacher_specs(spec)
  if DEMO_SPEC not in specs:
    return config
  directory = ensure_teacher(runlocal=config.get("runlocal", False))
  resolved = config.copy_and_resolve_references()
  named = [directory if s == DEMO_SPEC else s for s in specs]
  resolved.teacher.spec = ",".join(named) if isinstance(spec, str) else type(spec)(named)
  return resolved


def knn_table(config, result: train.Result) -> dict[str, float]:
  """kNN top-1 on the held-out split for a random-init student, the teacher and the student."""
  mesh = result.setup.mesh
  student = result.setup.model_student()
  student_fn = features.encoder_fn(student, pool="cls")
  random_params = nn.unbox(student.init(jax.random.key(config.seed + 1), jnp.zeros(
      (1, config.data.image_size, config.data.image_size, 3))))["params"]
  teacher = result.setup.teacher
  teacher_fn = lambda p, x: features.l2_normalize(teacher.apply(p, x, attn_layers=())["pooled"])
  rows = {"random-init student": (student_fn, random_params),
          f"teacher ({teacher.name.split('/')[-1]})": (teacher_fn, result.teacher_params),
          "MaskAlign student": (student_fn, result.state.params["student"])}
  return {name: evaluators.knn_top1(config, mesh, fn, params)
          for name, (fn, params) in rows.items()}


def write_plots(config, result: train.Result, workdir: str) -> list[str]:
  out = []
  path = os.path.join(workdir, "loss_curves.png")
  plots.plot_losses(os.path.join(workdir, "metrics.jsonl"), path)
  out.append(path)
  if "alignment" in result.state.params:
    path = os.path.join(workdir, "alignment_matrix.png")
    plots.plot_alignment(np.asarray(jax.device_get(result.state.params["alignment"])), path)
    out.append(path)
  student = result.setup.model_student()
  test_it = input_pipeline.make_eval_iterator(config.data, global_batch_size=config.eval.batch_size,
                                              mesh=result.setup.mesh)
  images = next(iter(test_it))["image"][:6]
  _, aux = jax.jit(lambda p, x: student.apply({"params": p}, x, attn_layers=(-1,)))(
      result.state.params["student"], images)
  cls_attn = aux["attn"][student.depth - 1][:, :, 0, 1:].mean(1)  # [n, N], mean over heads
  pixels = np.clip(np.asarray(images) * STUDENT_STD + STUDENT_MEAN, 0, 1)
  path = os.path.join(workdir, "cls_attention.png")
  plots.plot_cls_attention(pixels, np.asarray(cls_attn), student.grid, path)
  out.append(path)
  return out


def finetune_table(workdir: str, runlocal: bool) -> dict[str, float]:
  """Fine-tuned top-1 on the held-out digits: from a random init and from the pretrained
  student (`workdir`), the same config and budget."""
  from configs import demo as demo_config  # pylint: disable=import-outside-toplevel
  out = {}
  for name, spec in (("random-init student", None), ("MaskAlign student", workdir)):
    config = demo_config.get_finetune_config("runlocal=True" if runlocal else None)
    config.init_from = spec
    ft_dir = os.path.join(workdir, "finetune_" + ("pretrained" if spec else "random"))
    train.train_and_evaluate(config, ft_dir)
    out[name] = classification.read_results(ft_dir)["final"]["eval/top1"]
  return out


def format_table(knn: dict[str, float], tuned: dict[str, float], config) -> str:
  width = max(map(len, knn))
  cell = lambda v: f"{v * 100:6.2f}%" if v is not None else "      -"
  lines = [f"Top-1 on the {config.data.eval_split} digits: kNN (k={config.eval.knn_k}) of the "
           f"frozen CLS features, and after fine-tuning:", "",
           f"  {'':<{width}}  {'kNN':>7}  {'fine-tuned':>10}"]
  lines += [f"  {name:<{width}}  {cell(acc)}  {cell(tuned.get(name)):>10}"
            for name, acc in knn.items()]
  return "\n".join(lines)


def run(workdir: str, steps: int | None = None, runlocal: bool = False) -> dict[str, float]:
  """Returns {"<row> kNN": top-1, "<row> fine-tuned": top-1}."""
  from configs import demo as demo_config  # pylint: disable=import-outside-toplevel
  arg = "runlocal=True" if runlocal else (f"steps={steps}" if steps else None)
  config = resolve_teachers(demo_config.get_config(arg))
  result = train.train_and_evaluate(config, workdir)
  knn = knn_table(config, result)
  pngs = write_plots(config, result, workdir)
  tuned = finetune_table(workdir, runlocal)
  print(format_table(knn, tuned, config) + "\n\nPlots: " + ", ".join(pngs), flush=True)
  return {**{f"{k} kNN": v for k, v in knn.items()},
          **{f"{k} fine-tuned": v for k, v in tuned.items()}}


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", default="runs/demo")
  parser.add_argument("--steps", type=int, default=None, help="pretraining steps (default 800)")
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.INFO)
  logging.use_absl_handler()
  console.quiet_libraries()
  run(args.workdir, args.steps)


if __name__ == "__main__":
  main(sys.argv[1:])
