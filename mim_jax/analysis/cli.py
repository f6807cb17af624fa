r"""Analyse a trained run: restore its student, run a batch of eval images, write PNGs and JSON.

  python -m mim_jax.analysis --workdir runs/demo [--config configs/demo.py] \
      [--out runs/demo/analysis] [--batch_size 64] [--teacher] [--hessian]

The config is `<workdir>/config.json` (what the run saved) unless `--config path[:arg]` is given.
Writes to `--out` (default `<workdir>/analysis`):
  analysis.json          every number (per layer, per head / per index) and how it was measured
  attention_distance.png, attention_entropy.png, attention_nmi.png   per head and layer
  token_spectrum.png, image_spectrum.png   relative log singular values, one curve per layer
  fourier.png, fourier_high.png            relative log amplitude per frequency / at the highest
  cls_attention.png, query_attention.png   maps of the last layer / of chosen queries per layer
  landscape.png          (--hessian) the run's loss along the top-2 Hessian eigenvectors
`--hessian` also reports the Hessian trace (Hutchinson, `--trace_samples` Rademacher vectors).
The loss is the run's own objective on the batch: the pretraining loss of a pretraining run, the
classification loss (labels of the eval images) of a fine-tune or linear-probe workdir.
`--teacher` measures the run's frozen teacher on the same images and draws it beside the student.
The logic lives in the pure functions of `mim_jax.analysis`; this file only wires them up.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from mim_jax import assembly
from mim_jax import checkpoint as ckpt_lib
from mim_jax import demo
from mim_jax import plots as run_plots
from mim_jax import saved_config
from mim_jax import sharding as sharding_lib
from mim_jax import step as step_lib
from mim_jax import teachers
from mim_jax.analysis import hessian, plots, spectra, summary
from mim_jax.data import input_pipeline
from mim_jax.data import normalization
from mim_jax.teachers import teacher as teacher_lib
from mim_jax.tools import config_file

DEFINITIONS = {
    "attention_distance": "per head: mean over patch queries of sum_k attn[q,k] |pos q - pos k| "
                          "(patches), CLS excluded from queries and keys",
    "attention_entropy": "per head: mean over queries of the entropy (nats) of the attention row",
    "attention_nmi": "per head: I(Q;K) / sqrt(H(Q) H(K)), attention as p(k|q), uniform p(q)",
    "token_spectrum": "singular values of each image's centred [N, D] patch tokens over the "
                      "largest, averaged over images (linear; plots show the log)",
    "image_spectrum": "singular values of the centred [B, D] mean-pooled patch tokens over the "
                      "largest",
    "fourier": "mean over images and channels of log(|FFT2| + 1e-6) at frequency (k, k) minus "
               "at (0, 0), k = 0 .. g/2",
    "fourier_high": "the last entry of fourier: the highest frequency",
}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m mim_jax.analysis", description=__doc__.split(
      "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True, help="A run's directory (checkpoints/, config.json).")
  p.add_argument("--config", default=None, help="Config file[:arg]; default <workdir>/config.json.")
  p.add_argument("--out", default=None, help="Output directory; default <workdir>/analysis.")
  p.add_argument("--step", type=int, default=None, help="Checkpoint step; default the latest.")
  p.add_argument("--split", default=None, help="TFDS split of the images; default eval_split.")
  p.add_argument("--batch_size", type=int, default=64, help="Images (a multiple of the devices).")
  p.add_argument("--renormalize", action="store_true",
                 help="Attention distance over patch keys renormalised to sum to one.")
  p.add_argument("--nmi_normalization", default="sqrt", choices=("sqrt", "key"))
  p.add_argument("--queries", default=None,
                 help="Comma-separated patch indices for query maps; default 3 on the diagonal.")
  p.add_argument("--num_maps", type=int, default=4, help="Images shown in the CLS maps.")
  p.add_argument("--teacher", action="store_true", help="Measure the teacher too.")
  p.add_argument("--hessian", action="store_true",
                 help="Top-2 Hessian eigenvalues and trace of the run's loss, the landscape.")
  p.add_argument("--hessian_iters", type=int, default=50)
  p.add_argument("--trace_samples", type=int, default=16)
  p.add_argument("--landscape_points", type=int, default=11)
  p.add_argument("--landscape_radius", type=float, default=1.0)
  p.add_argument("--filter_norm", action="store_true", help="Filter-normalise the directions.")
  p.add_argument("--seed", type=int, default=0)
  return p.parse_args(argv)


# ---- restoring ---------------------------------------------------------------------------------
def load_config(workdir: str, spec: Optional[str] = None) -> ml_collections.ConfigDict:
  """`spec` (path[:arg]) if given, else the run's own `<workdir>/config.json` as today's code
  reads it (`mim_jax.saved_config`: renamed keys under their new names)."""
  if spec:
    return config_file.load(spec)
  return saved_config.load(workdir)


def restore(config: ml_collections.ConfigDict, workdir: str, step: Optional[int] = None
            ) -> tuple[step_lib.Setup, step_lib.TrainState, int]:
  """(setup, train state placed on the config's mesh, its step) from the workdir's checkpoint."""
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise FileNotFoundError(f"{workdir} has no checkpoints/ directory.")
  teacher = assembly.load_teacher(config)  # its architecture shapes the objective's heads
  mesh = sharding_lib.make_mesh(config.mesh)
  total, warmup = assembly.durations(config, input_pipeline.num_examples(config.data))
  setup = assembly.make_setup(config, teacher, mesh, total, warmup)
  abstract, shardings = step_lib.state_shardings(setup)
  mngr = ckpt_lib.manager(workdir, asynchronous=False)
  found, state = ckpt_lib.restore(mngr, abstract, shardings, step)
  if state is None:
    raise FileNotFoundError(f"No checkpoint in {mngr.directory}.")
  return setup, state, found


def eval_batch(config: ml_collections.ConfigDict, mesh, batch_size: int,
               split: Optional[str] = None) -> dict:
  """The first eval batch; refuses one padded past the end of the split."""
  it = input_pipeline.make_eval_iterator(config.data, global_batch_size=batch_size, mesh=mesh,
                                         split=split)
  batch = next(iter(it))
  if not bool(np.asarray(jax.device_get(batch["valid"])).all()):
    raise ValueError(f"The split has fewer than {batch_size} images: lower --batch_size.")
  return batch


# ---- measuring ---------------------------------------------------------------------------------
def student_forward(student: nn.Module, params: Any, images: jax.Array) -> tuple[list, dict]:
  """Eval-mode forward over all patches: (blocks L x [B, 1 + N, D], {i: [B, H, L, L]})."""
  _, aux = student.apply({"params": params}, images, train=False,
                         attn_layers=tuple(range(student.depth)))
  return list(aux["blocks"]), aux["attn"]


def teacher_forward(teacher: teacher_lib.Teacher, params: Any, images: jax.Array
                    ) -> tuple[list, dict]:
  out = teacher.apply(params, images, attn_layers=tuple(range(teacher.depth)))
  return list(out["hidden_states"][1:]), out["attn"]


def measure(forward, params: Any, images: jax.Array, grid, mesh, **kw) -> dict[str, np.ndarray]:
  """`summary.layer_measures` of `forward(params, images)`, jitted, on the host."""
  fn = jax.jit(lambda p, x: summary.layer_measures(*forward(p, x), grid, **kw))
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding_lib.LOGICAL_RULES):
    return {k: np.asarray(v) for k, v in jax.device_get(fn(params, images)).items()}


def pretraining_loss(setup: step_lib.Setup, teacher_params: Any, batch: dict, rng: jax.Array):
  """params -> the objective's loss on `batch` with masks drawn once from `rng`, eval mode."""
  if setup.config.get("mask") and setup.config.mask.kind == "block":
    fn = assembly.mask_fn(setup.config, setup.model_student().grid)
    binary = fn(np.random.default_rng(int(jax.random.randint(rng, (), 0, 2**31 - 1))),
                batch["image"].shape[0])
    batch = dict(batch, mask=jax.device_put(binary, sharding_lib.batch_sharding(setup.mesh, 2)))
  teacher_out = step_lib.teacher_forward(setup, teacher_params, batch["image"])
  masks = step_lib.compute_masks(setup, rng, batch, teacher_out)

  def loss_fn(params):
    out = setup.model.apply({"params": params}, batch["image"], masks, train=False)
    return setup.objective.loss_fn(out, teacher_out, masks, batch, setup.config)[0]
  return loss_fn


def default_queries(grid: tuple[int, int]) -> list[int]:
  """Patches at 1/4, 1/2 and 3/4 of the diagonal (row-major indices)."""
  gh, gw = grid
  return sorted({(gh * f // 4) * gw + gw * f // 4 for f in (1, 2, 3)})


# ---- writing -----------------------------------------------------------------------------------
def _unnormalize(images: np.ndarray) -> np.ndarray:
  mean, std = np.asarray(normalization.STUDENT_MEAN), np.asarray(normalization.STUDENT_STD)
  return np.clip(images * std + mean, 0.0, 1.0)


def write_plots(results: dict[str, dict], out: str, grid, queries: Sequence[int],
                images: np.ndarray) -> list[str]:
  """PNGs of every measure; `results` = {model name: layer_measures on the host}."""
  per = lambda key: {name: r[key] for name, r in results.items()}
  written = [
      plots.plot_per_head(per("attention_distance"), os.path.join(out, "attention_distance.png"),
                          ylabel="average attention distance (patches)"),
      plots.plot_per_head(per("attention_entropy"), os.path.join(out, "attention_entropy.png"),
                          ylabel="attention entropy (nats)"),
      plots.plot_per_head(per("attention_nmi"), os.path.join(out, "attention_nmi.png"),
                          ylabel="normalised mutual information"),
  ]
  for key in ("token_spectrum", "image_spectrum"):
    curves = {}
    rows = grid[0] * grid[1] if key == "token_spectrum" else images.shape[0]
    for name, r in results.items():
      # A centred matrix has one zero singular value too many to show on a log scale.
      keep = spectra.spectrum_rank_bound(rows, r[key].shape[1])
      curves[name] = np.asarray(spectra.log_relative(r[key][:, :keep]))
    written.append(plots.plot_layer_curves(curves, os.path.join(out, f"{key}.png"),
                                           xlabel="singular value index",
                                           ylabel="Δ log singular value", title=key))
  fourier = per("fourier")
  freqs = np.linspace(0.0, 1.0, next(iter(fourier.values())).shape[1])
  written.append(plots.plot_layer_curves(fourier, os.path.join(out, "fourier.png"), xs=freqs,
                                         xlabel="frequency (π)", ylabel="Δ log amplitude"))
  written.append(plots.plot_per_layer(per("fourier_high"), os.path.join(out, "fourier_high.png"),
                                      ylabel="Δ log amplitude at the highest frequency"))
  student = results["student"]
  n = student["cls_maps"].shape[1]
  written.append(run_plots.plot_cls_attention(
      _unnormalize(images[:n]), student["cls_maps"][-1].mean(1).reshape(n, -1), grid,
      os.path.join(out, "cls_attention.png")))
  if "query_maps" in student:  # [L, n, H, q, gh, gw]: first image, mean over heads
    maps = student["query_maps"][:, 0].mean(1)
    written.append(plots.plot_maps(
        maps, os.path.join(out, "query_attention.png"),
        row_labels=[f"layer {i + 1}" for i in range(maps.shape[0])],
        col_labels=[f"query {q}" for q in queries]))
  return written


def _jsonable(results: dict[str, dict]) -> dict:
  return {name: {k: np.asarray(r[k]).tolist() for k in summary.NUMBERS}
          for name, r in results.items()}


def landscape(setup: step_lib.Setup, state: step_lib.TrainState, t_params: Any, batch: dict,
              args: argparse.Namespace, out: str) -> dict:
  """Top-2 eigenvalues and the trace of the run's loss, its surface along the eigenvectors, the
  PNG."""
  rng_mask, rng_vec, rng_trace = jax.random.split(jax.random.key(args.seed), 3)
  with jax.set_mesh(setup.mesh), nn.logical_axis_rules(sharding_lib.LOGICAL_RULES):
    loss_fn = pretraining_loss(setup, t_params, batch, rng_mask)
    land = hessian.eigen_landscape(loss_fn, state.params, rng_vec, radius=args.landscape_radius,
                                   num_points=args.landscape_points, filter_norm=args.filter_norm,
                                   max_iters=args.hessian_iters)
    trace = float(hessian.hutchinson_trace(loss_fn, state.params, rng_trace,
                                           num_samples=args.trace_samples))
    loss0 = float(jax.jit(loss_fn)(state.params))
  plots.plot_landscape(land.alphas, land.betas, land.surface, os.path.join(out, "landscape.png"))
  return {"eigenvalues": land.eigenvalues.tolist(), "trace": trace,
          "trace_samples": args.trace_samples, "steps": land.alphas.tolist(),
          "surface": land.surface.tolist(), "filter_norm": args.filter_norm,
          "loss": config_loss_name(setup.config), "loss_at_params": loss0}


def config_loss_name(config: ml_collections.ConfigDict) -> str:
  if config.method in ("classify", "linear_probe"):
    return "classification (label-smoothed cross-entropy on the eval images' labels)"
  return f"{config.method} pretraining objective"


def main(argv: Optional[Sequence[str]] = None) -> dict:
  """Runs the analysis; returns what it wrote to analysis.json."""
  args = parse_args(argv)
  out = args.out or os.path.join(args.workdir, "analysis")
  config = demo.resolve_teachers(load_config(args.workdir, args.config))
  setup, state, step = restore(config, args.workdir, args.step)
  mesh = setup.mesh
  batch = eval_batch(config, mesh, args.batch_size, args.split)
  student = setup.model_student()
  grid = student.grid
  queries = ([int(q) for q in args.queries.split(",")] if args.queries
             else default_queries(grid))
  kw = dict(renormalize=args.renormalize, nmi_normalization=args.nmi_normalization,
            queries=tuple(queries), num_maps=args.num_maps)
  results = {"student": measure(lambda p, x: student_forward(student, p, x),
                                state.params["student"], batch["image"], grid, mesh, **kw)}
  t_params = None
  if setup.teacher is not None and (args.teacher or args.hessian):
    t_params, _ = assembly.place_teacher(setup.teacher, mesh)
  if args.teacher:
    if setup.teacher is None:
      raise ValueError(f"--teacher: method {config.method!r} has no teacher.")
    several = teachers.each(setup.teacher)  # several teachers: "teacher", "teacher_1", ...
    for k, (t, p) in enumerate(zip(several, t_params if len(several) > 1 else (t_params,))):
      results["teacher" if k == 0 else f"teacher_{k}"] = measure(
          lambda p, x, t=t: teacher_forward(t, p, x), p, batch["image"], grid, mesh, **kw)

  os.makedirs(out, exist_ok=True)
  images = np.asarray(jax.device_get(batch["image"]))
  report = {"workdir": os.path.abspath(args.workdir), "step": step, "method": config.method,
            "variant": config.student.variant, "grid": list(grid),
            "num_images": int(images.shape[0]), "split": args.split or config.data.eval_split,
            "renormalize": args.renormalize, "nmi_normalization": args.nmi_normalization,
            "definitions": DEFINITIONS, "measures": _jsonable(results)}
  report["plots"] = write_plots(results, out, grid, queries, images)
  if args.hessian:
    report["hessian"] = landscape(setup, state, t_params, batch, args, out)
    report["plots"].append(os.path.join(out, "landscape.png"))
  with open(os.path.join(out, "analysis.json"), "w") as f:
    json.dump(report, f, indent=1)
  print(f"analysis of step {step} written to {out}")
  return report
