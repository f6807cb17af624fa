"""The compiled train step keeps activations sharded along the batch, in float32 and bfloat16:
every all-gather in its HLO gathers a parameter (8 simulated CPU devices; a v5e:2x2 TPU topology
when libtpu is installed), and bfloat16 needs no more memory per device than float32."""
import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from configs import maskalign_b16_clip_b16
from mim_jax import aot, teachers, validate
from mim_jax import step as step_lib

# A gather's result: `%name = bf16[16,50,64]{...} all-gather(...)` (or a tuple of shapes), or
# the result of an asynchronous one's `all-gather-done` (its `-start` also holds the operands).
_ALL_GATHER = re.compile(r"=\s*(\(?[^=]*?\)?)\s+all-gather(?:-done)?\(")
_SHAPE = re.compile(r"\w+\[([\d,]*)\]")


def all_gather_shapes(hlo: str) -> list[tuple[int, ...]]:
  shapes = []
  for line in hlo.splitlines():
    m = _ALL_GATHER.search(line)
    if m:
      shapes += [tuple(int(d) for d in s.split(",") if d) for s in _SHAPE.findall(m.group(1))]
  return shapes


def parameter_sizes(result: aot.Compiled) -> set[int]:
  """Element counts of what an FSDP step gathers: each parameter of the state (the optimizer's
  moments have the same shapes) and of the teachers, and one layer's slice of a scanned stack.
  Counts, not shapes: XLA gathers some kernels reshaped (a [4, 4, 3, D] patch kernel as
  [48, D]) or with a unit axis."""
  abstract, _ = step_lib.state_shardings(result.setup)
  trees = [abstract.params] + [t.params for t in teachers.each(result.setup.teacher)]
  sizes = set()
  for tree in trees:
    for path, x in jax.tree_util.tree_leaves_with_path(tree):
      sizes.add(math.prod(x.shape))
      if "layers" in jax.tree_util.keystr(path):  # [depth, ...]: the scan gathers one layer
        sizes.add(math.prod(x.shape[1:]))
  return sizes


def activation_gathers(hlo: str, sizes: set[int]) -> list[tuple[int, ...]]:
  """All-gathers whose result is no parameter: activations (or their cotangents), in any
  layout, flattened ([B * N, D]) or not."""
  return [s for s in all_gather_shapes(hlo) if math.prod(s) not in sizes]


def config_for(teacher_dir, precision, scan=False, **mesh):
  c = maskalign_b16_clip_b16.get_config("runlocal=True")
  c.teacher.spec = teacher_dir
  if scan:  # kernels of some weight beside the activations of 24 16x16 images
    c.student.variant = "mini/4"
  c.precision = precision
  c.batch_size = 24  # no parameter dimension of the tiny models is 24
  c.student.scan = scan
  c.mesh.update(mesh)
  return c


def compile_both(teacher_dir, devices, scan=False, **mesh):
  return {p: aot.compile_step(config_for(teacher_dir, p, scan, **mesh), devices)
          for p in ("float32", "bfloat16")}


def check(results):
  for precision, r in results.items():
    gathers = activation_gathers(r.compiled.as_text(), parameter_sizes(r))
    assert not gathers, (precision, gathers[:5])
  f32, bf16 = results["float32"].memory, results["bfloat16"].memory
  assert bf16.total <= f32.total, (bf16, f32)


def test_pure_data_parallel_step_gathers_nothing(tiny_vit_teacher_dir):
  results = compile_both(tiny_vit_teacher_dir, aot.cpu_devices(8), data=8, fsdp=1)
  for r in results.values():  # parameters are replicated: no all-gather at all
    assert all_gather_shapes(r.compiled.as_text()) == []
  check(results)


def test_fsdp_step_gathers_parameters_only(tiny_vit_teacher_dir):
  results = compile_both(tiny_vit_teacher_dir, aot.cpu_devices(8), data=2, fsdp=4)
  assert all_gather_shapes(results["float32"].compiled.as_text())  # fsdp gathers weights
  check(results)


def test_scanned_fsdp_step_gathers_no_activations_and_bf16_is_leaner(tiny_vit_teacher_dir):
  """student.scan=True: the backward pass recasts each layer's (gathered) kernels instead of
  keeping a bfloat16 copy of every layer's, which had made bf16 need more memory than float32."""
  check(compile_both(tiny_vit_teacher_dir, aot.cpu_devices(8), scan=True, data=2, fsdp=4))


@pytest.mark.usefixtures("libtpu")
def test_tpu_topology_step_gathers_no_activations(tiny_vit_teacher_dir):
  for scan in (False, True):
    check(compile_both(tiny_vit_teacher_dir, aot.tpu_devices("v5e:2x2"), scan=scan, data=2,
                       fsdp=2))


def test_all_gather_parser():
  """On lines as XLA:CPU and libtpu print them (shortened after the operands)."""
  hlo = ("  %all-gather.44 = f32[60,32]{1,0} all-gather(%add_bitcast_fusion.3), channel_id=70, "
         "replica_groups=[2,4]<=[8], dimensions={0}\n"
         "  %all-gather.212 = bf16[64,32]{0,1:T(8,128)(2,1)} all-gather(%param_0.3053), "
         "channel_id=57\n"
         "  %ynn_fusion.30 = f32[60,32]{1,0} fusion(%all-gather.44, %copy.530), kind=kCustom\n")
  assert all_gather_shapes(hlo) == [(60, 32), (64, 32)]
  assert activation_gathers(hlo, {64 * 32}) == [(60, 32)]


def test_a_flattened_activation_gather_is_found(tiny_vit_teacher_dir, monkeypatch):
  """The check finds what the batch-size search it replaced could not: an activation gathered
  as a flattened [B * N, D] array (the adaptor's input, replicated and summed along its rows, so
  that XLA cannot move the gather before the flattening)."""
  from mim_jax.objectives import maskalign  # pylint: disable=import-outside-toplevel
  call = maskalign.Adaptor.__call__

  def gathering(self, x):
    flat = nn.with_logical_constraint(x.reshape(-1, x.shape[-1]), (None, None))  # replicated
    return call(self, x + 1e-3 * jnp.cumsum(flat, axis=0).reshape(x.shape))

  monkeypatch.setattr(maskalign.Adaptor, "__call__", gathering)
  r = aot.compile_step(config_for(tiny_vit_teacher_dir, "float32", data=2, fsdp=4),
                       aot.cpu_devices(8))
  gathers = activation_gathers(r.compiled.as_text(), parameter_sizes(r))
  # [24 * tokens, width]: no axis of the batch's size, what a search for the batch missed
  flattened = [g for g in gathers if len(g) == 2 and g[0] % 24 == 0 and g[0] > 24 and g[1] == 32]
  assert flattened, gathers


def test_accumulating_step_gathers_no_activations(tiny_vit_teacher_dir, tmp_path):
  """optim.accumulate_steps=2: the micro-batches are strided views of each device's rows (6 rows,
  3 per micro-batch), so no activation is gathered. (A batch of 40, which the run refuses, has 5
  rows per device and made XLA gather [6, N, D] activations of every block: the search for 40
  or 20 in a shape had not seen them.)"""
  config = config_for(tiny_vit_teacher_dir, "bfloat16", data=2, fsdp=4)
  config.batch_size, config.optim.accumulate_steps = 48, 2
  validate.check(config, str(tmp_path / "run"))  # a batch the run accepts
  result = aot.compile_step(config, aot.cpu_devices(8))
  hlo = result.compiled.as_text()
  assert not activation_gathers(hlo, parameter_sizes(result))
  assert "while" in hlo  # the micro-batches run one after another
