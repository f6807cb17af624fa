"""One train step on two backends from the same parameters and batch, in float32: the GPU
against the CPU of the same machine, in one process.

  python benchmarks/gpu_parity.py [--platforms gpu,cpu] [--batch 8] [--json PATH]
      [--config-arg ARG] [--teacher clip_b16|CHECKPOINT_DIR]

The step is the MaskAlign step of benchmarks/step_speed.py (ViT-B/16 student, CLIP-B/16 teacher
with random weights, 224 px; `--config-arg runlocal=True --teacher DIR` for a tiny one), in
float32 with no warmup (the first step moves the parameters). The state is initialised on the
first platform and copied through the host to the second; both take the same images. Matmuls
run in true float32 on both (`jax.default_matmul_precision("float32")`; a GPU would otherwise
use TF32 for float32 dots). Compared, each against a tolerance fixed before any GPU ran it:

  loss       |a - b| <= 1e-4 * |a|
  gradient   ||a - b|| / ||a|| <= 1e-3 over all parameters, read from AdamW's first moment
             after one step (mu = (1 - b1) * g: the gradient the optimizer received)
  params     after the step, max |a - b| <= 1e-6 + 1e-5 * |a| over the parameters whose gradient
             sign is clear (|g| > 10 * max(|g_a - g_b|, adam eps) on the first platform); AdamW's
             first step is lr * g / (|g| + eps), about lr * sign(g), so where the two gradients
             are within rounding of zero (e.g. the attention key bias, whose exact gradient is
             0) the steps may differ by up to 2 * lr: those are counted and their max printed,
             not judged. The max over all parameters is printed too.

Exit status 1 when a check fails. `--platforms cpu,cpu` runs the same code on two CPU devices
(tests/test_gpu_check.py), where every difference is 0.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from benchmarks import step_speed  # noqa: E402
from mim_jax import assembly, step as step_lib, teachers  # noqa: E402

LOSS_RTOL = 1e-4
GRAD_REL_L2 = 1e-3
PARAM_ATOL, PARAM_RTOL = 1e-6, 1e-5
CLEAR_SIGN = 10.0  # |g| over max(|g_a - g_b|, eps): the gradient's sign is not in doubt


@dataclasses.dataclass
class Side:
  """What one platform's step left on the host."""
  platform: str
  loss: float
  grads: dict[str, np.ndarray]  # parameter path -> gradient
  params: dict[str, np.ndarray]  # parameter path -> value after the step


def flat(tree: Any) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(path): np.asarray(leaf, np.float64)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def adam_mu(opt_state: Any) -> Any:
  """The first moment of the (only) Adam state in an optax state tree."""
  (adam,) = [s for s in jax.tree_util.tree_leaves(
      opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
             if isinstance(s, optax.ScaleByAdamState)]
  return adam.mu


def side(platform: str, state: step_lib.TrainState, metrics: dict, b1: float) -> Side:
  host = jax.device_get((state, metrics))
  grads = {k: v / (1.0 - b1) for k, v in flat(adam_mu(host[0].opt_state)).items()}
  return Side(platform, float(host[1]["loss"]), grads, flat(host[0].params))


def compare(a: Side, b: Side, lr: float, eps: float) -> list[dict]:
  """The three checks (see the module docstring), each a dict with name, figures, tolerance and
  `ok`."""
  loss_diff = abs(a.loss - b.loss)
  ga = np.concatenate([a.grads[k].ravel() for k in sorted(a.grads)])
  gb = np.concatenate([b.grads[k].ravel() for k in sorted(a.grads)])
  pa = np.concatenate([a.params[k].ravel() for k in sorted(a.grads)])
  pb = np.concatenate([b.params[k].ravel() for k in sorted(a.grads)])
  grad_rel = float(np.linalg.norm(ga - gb) / max(np.linalg.norm(ga), 1e-30))
  clear = np.abs(ga) > CLEAR_SIGN * np.maximum(np.abs(ga - gb), eps)
  dp = np.abs(pa - pb)
  excess = dp - (PARAM_ATOL + PARAM_RTOL * np.abs(pa))
  return [
      dict(name="loss", a=a.loss, b=b.loss, max_abs_diff=loss_diff,
           tolerance=f"<= {LOSS_RTOL:g} * |loss| = {LOSS_RTOL * abs(a.loss):.3g}",
           ok=bool(loss_diff <= LOSS_RTOL * abs(a.loss))),
      dict(name="gradient", max_abs_diff=float(np.abs(ga - gb).max()), rel_l2=grad_rel,
           tolerance=f"relative L2 <= {GRAD_REL_L2:g}", ok=bool(grad_rel <= GRAD_REL_L2)),
      dict(name="params", max_abs_diff=float(dp.max()),
           clear_max_abs_diff=float(dp[clear].max()) if clear.any() else 0.0,
           clear_count=int(clear.sum()), unclear_count=int((~clear).sum()),
           unclear_max_abs_diff=float(dp[~clear].max()) if (~clear).any() else 0.0,
           two_lr=2 * lr,
           tolerance=f"<= {PARAM_ATOL:g} + {PARAM_RTOL:g} * |p| where the gradient sign is clear",
           ok=bool((excess[clear] <= 0).all())),
  ]


def report_lines(checks: list[dict], a: str, b: str) -> list[str]:
  loss, grad, params = checks
  verdict = {True: "PASS", False: "FAIL"}
  return [
      f"loss      {a} {loss['a']:.8g}  {b} {loss['b']:.8g}  |diff| {loss['max_abs_diff']:.3g} "
      f"({loss['tolerance']}): {verdict[loss['ok']]}",
      f"gradient  max |diff| {grad['max_abs_diff']:.3g}, relative L2 {grad['rel_l2']:.3g} "
      f"({grad['tolerance']}): {verdict[grad['ok']]}",
      f"params    max |diff| {params['max_abs_diff']:.3g} over all; {params['clear_max_abs_diff']:.3g}"
      f" over the {params['clear_count']} with a clear gradient sign ({params['tolerance']}): "
      f"{verdict[params['ok']]}; the other {params['unclear_count']}: max |diff| "
      f"{params['unclear_max_abs_diff']:.3g} (bound 2 * lr = {params['two_lr']:.3g}, not judged)",
  ]


def devices_for(platforms: list[str]) -> list[Any]:
  """One device per named platform; a platform named twice gets its next device."""
  used: dict[str, int] = {}
  out = []
  for p in platforms:
    out.append(jax.devices(p)[used.get(p, 0)])
    used[p] = used.get(p, 0) + 1
  return out


def make_teacher(config, spec: str) -> teachers.Teacher:
  if spec in teachers.KNOWN:
    return step_speed.random_teacher(config, spec)
  config.teacher.spec = spec
  return assembly.load_teacher(config)


def run(platforms: list[str], batch: int, config_arg: Optional[str], teacher_spec: str
        ) -> tuple[list[Side], float, float]:
  """(each platform's Side, the step's lr, Adam's eps)."""
  config = step_speed.maskalign_config("float32", batch, config_arg)
  with jax.default_matmul_precision("float32"):
    teacher = make_teacher(config, teacher_spec)
    size = config.data.image_size
    images = np.random.default_rng(0).standard_normal((batch, size, size, 3)).astype(np.float32)
    sides, host_state = [], None
    for platform, device in zip(platforms, devices_for(platforms)):
      setup, fn, t_params, batch_arr = step_speed.build(config, teacher, device, images,
                                                        warmup_steps=0)
      if host_state is None:
        state = step_lib.init_state(setup, jax.random.key(0))
        host_state = jax.device_get(state)
      else:
        state = jax.device_put(host_state, step_lib.state_shardings(setup)[1])
      sides.append(side(platform, *fn(state, t_params, batch_arr), float(config.optim.b1)))
  return sides, float(setup.schedule(0)), float(config.optim.get("eps", 1e-8))


def main(argv: Optional[list[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--platforms", default="gpu,cpu")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--config-arg", default=None)
  parser.add_argument("--teacher", default="clip_b16")
  parser.add_argument("--json", default=None, help="write the figures to this file too")
  args = parser.parse_args(argv)
  platforms = args.platforms.split(",")
  if len(platforms) != 2:
    print(f"error: --platforms takes two platforms, e.g. gpu,cpu; got {args.platforms!r}",
          file=sys.stderr)
    return 2
  try:
    devices_for(platforms)
  except RuntimeError as e:
    print(f"error: {args.platforms}: {e}", file=sys.stderr)
    return 2
  (a, b), lr, eps = run(platforms, args.batch, args.config_arg, args.teacher)
  checks = compare(a, b, lr, eps)
  devices = devices_for(platforms)
  names = [f"{d.platform}:{d.id}" for d in devices]
  print(f"one float32 train step, batch {args.batch}, lr {lr:.3g}, JAX {jax.__version__}: "
        + ", ".join(f"{n} = {d.device_kind}" for n, d in zip(names, devices)))
  print("\n".join(report_lines(checks, *names)))
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"platforms": platforms, "batch": args.batch, "lr": lr,
                 "devices": [d.device_kind for d in devices],
                 "jax": jax.__version__, "checks": checks}, f, indent=1)
  return 0 if all(c["ok"] for c in checks) else 1


if __name__ == "__main__":
  sys.exit(main())
