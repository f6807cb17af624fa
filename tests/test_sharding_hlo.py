"""The compiled train step keeps activations sharded along the batch, in float32 and bfloat16:
no all-gather of activations in its HLO (8 simulated CPU devices; a v5e:2x2 TPU topology when
libtpu is installed), and bfloat16 needs no more memory per device than float32."""
import re

import pytest

from configs import maskalign_b16_clip_b16
from mim_jax import aot

# An all-gather's result: `%name = bf16[16,50,64]{...} all-gather(...)` (or a tuple of shapes).
_ALL_GATHER = re.compile(r"=\s*(\(?[^=]*?\)?)\s+all-gather(?:-start)?\(")
_SHAPE = re.compile(r"\w+\[([\d,]*)\]")


def all_gather_shapes(hlo: str) -> list[tuple[int, ...]]:
  shapes = []
  for line in hlo.splitlines():
    m = _ALL_GATHER.search(line)
    if m:
      shapes += [tuple(int(d) for d in s.split(",") if d) for s in _SHAPE.findall(m.group(1))]
  return shapes


def activation_gathers(hlo: str, batch: int) -> list[tuple[int, ...]]:
  """All-gathers whose result carries the global batch (parameters have no batch axis; the tiny
  model's widths are chosen to differ from the batch)."""
  return [s for s in all_gather_shapes(hlo) if batch in s]


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


def check(results, batch=24):
  for precision, r in results.items():
    hlo = r.compiled.as_text()
    assert not activation_gathers(hlo, batch), (precision, activation_gathers(hlo, batch)[:5])
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


def test_tpu_topology_step_gathers_no_activations(tiny_vit_teacher_dir):
  pytest.importorskip("libtpu", reason="TPU topologies need libtpu (requirements-tpu.txt)")
  for scan in (False, True):
    check(compile_both(tiny_vit_teacher_dir, aot.tpu_devices("v5e:2x2"), scan=scan, data=2,
                       fsdp=2))


def test_all_gather_parser():
  hlo = ("  %ag = bf16[24,17,32]{2,1,0} all-gather(bf16[12,17,32]{2,1,0} %x), dimensions={0}\n"
         "  %w = f32[32,96]{1,0} all-gather-start(f32[8,96]{1,0} %p), dimensions={0}\n"
         "  %y = f32[24,32]{1,0} add(f32[24,32]{1,0} %a, f32[24,32]{1,0} %b)\n")
  assert all_gather_shapes(hlo) == [(24, 17, 32), (32, 96)]
  assert activation_gathers(hlo, 24) == [(24, 17, 32)]



def test_accumulating_step_gathers_no_activations(tiny_vit_teacher_dir):
  """optim.accumulate_steps=2: the micro-batches are strided views of each device's rows, so
  neither the batch (40) nor a micro-batch (20) is ever gathered."""
  config = config_for(tiny_vit_teacher_dir, "bfloat16", data=2, fsdp=4)
  config.batch_size, config.optim.accumulate_steps = 40, 2
  hlo = aot.compile_step(config, aot.cpu_devices(8)).compiled.as_text()
  assert not activation_gathers(hlo, 40) and not activation_gathers(hlo, 20)
  assert "while" in hlo  # the micro-batches run one after another
