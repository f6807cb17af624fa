"""The analytical model FLOPs of each method equal the matmul FLOPs XLA compiles for its train
step (unscanned, no remat: nothing recomputed), within 3%: one CPU device, the runlocal configs
with a tiny transformers teacher."""
import importlib

import pytest

from mim_jax import aot, hlo_cost, model_flops

# method -> (config module, its argument, overrides)
CASES = {
    "maskalign": ("maskalign_b16_clip_b16", "runlocal=True", {}),
    "maskdistill": ("maskdistill_b16_clip_b16", "runlocal=True", {}),
    "mrmae": ("mrmae_b16_clip_b16", "runlocal=True", {}),
    # The hybrid ConvViT student (Convnano/16 at 64 px) under a teacher at 16 px (resized),
    # compiled for one v5e chip: XLA:CPU computes the depthwise convolutions' kernel gradient
    # as a dense convolution over every pair of channels (C times the work; 20.7 of its 179.5
    # MFLOP here) where the TPU compiler does the grouped one the model needs.
    "mrmcmae": ("mrmcmae_b16_clip_b16", "runlocal=True", {}),
    "mae": ("mae_b16", "runlocal=True", {}),
    # robust MAE with its mid-level mask tokens (4 of 16 patches enter after block 1)
    "mae_robust": ("mae_robust_b16", "runlocal=True", {"objective.mid_mask_ratio": 0.25}),
    "fd": ("fd_b16_clip_b16", "runlocal=True", {}),
    "classify": ("finetune", "runlocal=True", {}),
    "linear_probe": ("linear_probe", "runlocal=True", {}),
}
# Methods whose compile is also exercised by other fast tests run here by default; the rest
# are marked slow (each is one more CPU compile of a tiny step).
FAST = {"maskalign", "mae_robust", "classify"}


def config_for(case, teacher_dir):
  module, arg, overrides = CASES[case]
  c = importlib.import_module(f"configs.{module}").get_config(arg)
  if c.teacher.get("spec"):
    c.teacher.spec = teacher_dir
  for key, value in overrides.items():
    node = c
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    node[last] = value
  c.precision = "float32"
  return c


ON_TPU = {"mrmcmae"}


def compiled_matmul_flops(config, tpu=False):
  if tpu:
    pytest.importorskip("libtpu", reason="TPU topologies need libtpu (requirements-tpu.txt)")
  devices = aot.tpu_devices("v5e:1x1") if tpu else aot.cpu_devices(1)
  result = aot.compile_step(config, devices)
  return result, hlo_cost.analyze(result.compiled.as_text(), 1).matmul_flops


@pytest.mark.parametrize("case", [
    pytest.param(c, marks=() if c in FAST else pytest.mark.slow) for c in CASES])
def test_model_flops_equal_the_compiled_matmuls(case, tiny_vit_teacher_dir):
  config = config_for(case, tiny_vit_teacher_dir)
  result, compiled = compiled_matmul_flops(config, tpu=case in ON_TPU)
  counted = model_flops.count(config, result.setup.teacher)
  assert compiled > 0
  assert counted.total == pytest.approx(compiled, rel=0.03), counted.parts
  if config.teacher.get("spec") and case != "linear_probe":
    assert counted.parts["teacher forward"] > 0


def test_remat_adds_compiled_flops_but_not_model_flops(tiny_vit_teacher_dir):
  """The MFU numerator must not grow with recomputation: remat=full compiles each student
  block's forward again inside the backward pass (all but its last matmul, whose output the
  backward never reads), the model count stays."""
  from mim_jax import masking  # pylint: disable=import-outside-toplevel
  plain = config_for("maskalign", tiny_vit_teacher_dir)
  remat = config_for("maskalign", tiny_vit_teacher_dir)
  remat.student.remat = "full"
  (r0, f0), (r1, f1) = compiled_matmul_flops(plain), compiled_matmul_flops(remat)
  enc = model_flops.student_encoder(plain, visible=masking.num_keep(enc_patches(plain),
                                                                     plain.mask.ratio))
  fc2 = sum(model_flops.dense(t, enc.mlp, enc.width) for t in enc.tokens)
  assert f1 - f0 == plain.batch_size * (enc.blocks() - fc2)
  assert model_flops.count(remat, r1.setup.teacher).total == model_flops.count(
      plain, r0.setup.teacher).total


def enc_patches(config):
  return model_flops.student_encoder(config).patches


def test_b16_counts_match_the_usual_formula():
  """ViT-B/16 fine-tuning at 224: 3 x (forward) with the patch embedding's backward halved;
  the forward is the textbook 2 x params x tokens plus attention."""
  from configs import finetune  # pylint: disable=import-outside-toplevel
  c = finetune.get_config("variant=B/16")
  c.batch_size = 1
  d, n, layers_, mlp = 768, 197, 12, 3072
  block = 2 * n * (4 * d * d + 2 * d * mlp) + 4 * n * n * d
  embed = 2 * 196 * 768 * d
  head = 2 * d * 1000
  forward = embed + layers_ * block + head
  assert model_flops.count(c).total == pytest.approx(3 * forward - embed)
  # the familiar 17.6 G multiply-adds of a ViT-B/16 forward: 35.1 GFLOP, 105.4 per step
  assert forward / 1e9 == pytest.approx(35.1, abs=0.1)
