"""Ahead-of-time compilation of the real train step: a CPU mesh always, a TPU topology when
libtpu is installed (requirements-tpu.txt)."""
import os
import subprocess
import types
import sys

import jax
import numpy as np
import pytest

from configs import maskalign_b16_clip_b16
from mim_jax import aot, assembly, sharding
from mim_jax import checkpoint as ckpt_lib
from mim_jax import step as step_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(teacher_dir, **mesh):
  c = maskalign_b16_clip_b16.get_config("runlocal=True")
  c.teacher.spec = teacher_dir
  c.mesh.update(mesh)
  return c


def shard_bytes(tree) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs."""
  return sum(int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize
             for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("fixture", ["tiny_vit_teacher_dir", "tiny_clip_teacher_dir"])
def test_abstract_teacher_matches_the_loaded_one(fixture, request):
  config = tiny_config(request.getfixturevalue(fixture))
  real, abstract = assembly.load_teacher(config), assembly.load_teacher(config, abstract=True)
  assert abstract == real  # same arch, grid, normalisation, dtype (params are not compared)
  assert jax.tree.map(np.shape, abstract.params) == jax.tree.map(np.shape, real.params)
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(abstract.params))


def test_abstract_clip_l14_under_a_l16_student_is_resized_without_weights():
  config = maskalign_b16_clip_b16.get_config("variant=L/16,teacher=clip_l14")
  config.teacher.dtype = "bfloat16"
  teacher = assembly.load_teacher(config, abstract=True)
  assert (teacher.grid, teacher.image_size, teacher.depth) == (14, 196, 24)
  assert teacher.params["pos_embedding"].shape == (1 + 14 * 14, 1024)
  assert {x.dtype for x in jax.tree.leaves(teacher.params)} == {np.dtype("bfloat16")}


def test_cpu_mesh_compiles_the_maskalign_step_and_reports_memory(tiny_vit_teacher_dir):
  devices = aot.cpu_devices(8)
  replicated = aot.compile_step(tiny_config(tiny_vit_teacher_dir), devices)
  m = replicated.memory
  assert replicated.mesh_shape == {"data": 8, "fsdp": 1, "model": 1}
  assert min(m.argument, m.output, m.temp, m.total) > 0
  assert m.alias > 0  # the state is donated: its outputs reuse its buffers
  fsdp = aot.compile_step(tiny_config(tiny_vit_teacher_dir, data=2, fsdp=4), devices)
  assert fsdp.memory.argument < m.argument  # parameters and moments are sharded over fsdp

  text, fits = aot.report(replicated, devices, hbm=1.0)
  assert fits and "OK: fits" in text and "total" in text
  flops, nbytes = aot.chips.step_cost(replicated.compiled.cost_analysis())
  assert flops > 1e6 and nbytes > 1e5  # XLA's cost analysis of the step, and its roofline
  assert f"XLA's bytes accessed {nbytes / 1e9:.2f} GB" in text and "roofline ESTIMATE" in text
  text, fits = aot.report(replicated, devices, hbm=1e-6)
  assert not fits and "OUT OF MEMORY" in text
  # The levers that would help, from this config: remat, a smaller batch, more fsdp (the
  # arguments are a large part of this tiny step).
  assert "--config.student.remat=full" in text and "--config.batch_size=8 (1 per device)" in text
  assert "--config.mesh.fsdp=2" in text


def test_argument_memory_is_the_shards_of_state_teacher_and_batch(tiny_vit_teacher_dir):
  config = tiny_config(tiny_vit_teacher_dir, data=2, fsdp=4)
  devices = aot.cpu_devices(8)
  result = aot.compile_step(config, devices)
  setup = result.setup
  abstract, shardings = step_lib.state_shardings(setup)
  state = ckpt_lib.abstract_with_shardings(abstract, shardings)
  teacher = ckpt_lib.abstract_with_shardings(
      setup.teacher.params, assembly.teacher_shardings(setup.teacher, setup.mesh))
  batch = aot.abstract_batch(config, setup)
  everything = shard_bytes(state) + shard_bytes(teacher) + shard_bytes(batch)
  # jit drops arguments the step never reads (the labels, the teacher's final norm here).
  assert shard_bytes(state) + shard_bytes(batch["image"]) <= result.memory.argument <= everything
  assert result.memory.argument > 0.99 * everything


def test_command_line_exits_non_zero_when_out_of_memory(tiny_vit_teacher_dir):
  env = dict(os.environ, XLA_FLAGS="")  # the command sets its own device count
  r = subprocess.run(
      [sys.executable, "-m", "mim_jax.aot", "--config",
       "configs/maskalign_b16_clip_b16.py:runlocal=True",
       f"--config.teacher.spec={tiny_vit_teacher_dir}", "--platform=cpu", "--devices", "4",
       "--hbm_gib=1e-6", "--breakdown", "--top=3"], capture_output=True, text=True, env=env,
      cwd=ROOT, timeout=300)
  assert r.returncode == 1, r.stderr[-2000:]
  assert "cpu x 4 devices" in r.stdout and "OUT OF MEMORY" in r.stdout
  # --breakdown on CPU: one memory space, the origins of the step's parts
  assert "top 3 by HBM bytes" in r.stdout and "teacher forward" in r.stdout
  assert "backward" in r.stdout and "optimizer" in r.stdout
  assert ("compiling the maskalign step for cpu x 4: mesh {'data': 4, 'fsdp': 1, 'model': 1}, "
          "4 images per device (global 16), precision float32, remat none") in r.stdout
  r = subprocess.run([sys.executable, "-m", "mim_jax.aot", "--config",
                      "configs/maskalign_b16_clip_b16.py", "--topology", "v5e-256"],
                     capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
  assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith(
      "error: Bad topology 'v5e-256'")


@pytest.mark.usefixtures("libtpu")
def test_tpu_topology_compiles_without_a_tpu(tiny_vit_teacher_dir):
  devices = aot.tpu_devices("v5e:2x2")
  assert len(devices) == 4 and aot.hbm_gib(devices) == 16
  # What libtpu needed while it loaded is taken back: a process started from this one after it
  # (a run in a test) would otherwise see a TPU pod's worker variables and go distributed.
  assert not {"TPU_WORKER_HOSTNAMES", "TPU_ACCELERATOR_TYPE"} & set(os.environ)
  result = aot.compile_step(tiny_config(tiny_vit_teacher_dir), devices)
  assert min(result.memory.argument, result.memory.temp, result.memory.total) > 0
  text, fits = aot.report(result, devices, aot.hbm_gib(devices))
  assert fits and "TPU v5 lite x 4 devices" in text
  # The roofline's HBM bytes and XLA's total beside them come from this one compiled module.
  cost, _ = aot.step_cost(result)
  assert (cost.xla_flops, cost.xla_bytes) == aot.chips.step_cost(result.compiled.cost_analysis())
  again = aot.hlo_cost.analyze(result.compiled.as_text(), 4)
  assert 0 < cost.hbm_bytes == again.hbm_bytes < cost.total_bytes == again.total_bytes
  assert f"HBM {cost.hbm_bytes / 1e9:.2f} GB" in text


@pytest.mark.usefixtures("libtpu")
def test_tpu_compiler_refusing_the_step_is_out_of_memory(tiny_vit_teacher_dir):
  config = tiny_config(tiny_vit_teacher_dir)
  config.batch_size = 2**20  # ~77 GiB of activations on one v5e chip (16 GiB)
  with pytest.raises(aot.CompilerOutOfMemory, match="RESOURCE_EXHAUSTED"):
    aot.compile_step(config, aot.tpu_devices("v5e:1x1"))


def test_bad_topology_names_the_format():
  with pytest.raises(ValueError, match="v5e:16x16"):
    aot.tpu_devices("v5e-256")


def test_a_mesh_that_does_not_fit_names_the_fsdp_values_that_would():
  from mim_jax import sharding  # pylint: disable=import-outside-toplevel
  with pytest.raises(ValueError, match=r"fsdp may be any of \[1, 2, 4, 8\]"):
    sharding.mesh_shape({"data": -1, "fsdp": 3}, 8)
  with pytest.raises(ValueError, match=r"model=2, fsdp may be any of \[1, 2, 4, 8\]"):
    sharding.mesh_shape({"data": 2, "fsdp": 2, "model": 2}, 16)


def test_sweep_doubles_the_batch_until_the_first_out_of_memory():
  """The sweep's loop on a made-up memory model (no compile): 1 GiB per device, temporaries of
  64 MiB per example over the batch shards (halved by remat=full), arguments split by fsdp."""
  config = maskalign_b16_clip_b16.get_config("runlocal=True")
  config.batch_size = 8
  devices = [object()] * 8
  seen = []

  def fake_compile(c, devs):
    seen.append((c.student.remat, c.mesh.fsdp, c.batch_size))
    if c.mesh.fsdp == 3:
      raise ValueError("Mesh {'data': -1, 'fsdp': 3} does not divide 8 devices; fsdp ...")
    if c.batch_size >= 1024:
      raise aot.CompilerOutOfMemory("RESOURCE_EXHAUSTED")
    temp = c.batch_size // len(devs) * 64 * 2**20 // (2 if c.student.remat == "full" else 1)
    return aot.Memory(argument=512 * 2**20 // c.mesh.fsdp, output=0, alias=0, temp=temp, code=0)

  rows = aot.sweep(config, devices, 1.0, remats=["none", "full"], fsdps=[1, 8, 3],
                   max_batch=4096, compile_fn=fake_compile, log=lambda _: None)
  best = {(r.remat, r.fsdp): (r.batch, r.stop) for r in rows}
  # none, fsdp 1: 512 MiB + 8 x 64 MiB at batch 64 is 1 GiB: fits; 128 does not. full: 128.
  assert best[("none", 1)] == (64, "OUT OF MEMORY at 128")
  assert best[("full", 1)] == (128, "OUT OF MEMORY at 256")
  assert best[("none", 8)] == (64, "OUT OF MEMORY at 128")  # 64 MiB + 8 x 64 MiB fits
  assert best[("full", 8)] == (128, "OUT OF MEMORY at 256")
  assert best[("none", 3)][0] is None and "does not divide" in best[("none", 3)][1]
  # Doubling stops at the first failure: 8, 16, 32, 64, 128 for (none, 1), nothing beyond.
  assert [b for r, f, b in seen if (r, f) == ("none", 1)] == [8, 16, 32, 64, 128]
  text = aot.sweep_table(rows, [types.SimpleNamespace(device_kind="cpu")] * 8, 1.0,
                         {"data": -1, "fsdp": 1, "model": 1})
  assert "  full              1     128        16    1.00   OUT OF MEMORY at 256" in text


@pytest.mark.usefixtures("libtpu")
def test_mesh_that_needs_split_physical_axes_names_the_option():
  devices = aot.tpu_devices("v5p:4x4x4")  # 64 chips: an axis of 8 splits a physical axis of 4
  with pytest.raises(ValueError, match=r"set mesh.allow_split_physical_axes=True .* fsdp may be "
                                       r"any of \[1, 2, 4, 8, 16, 32, 64\]"):
    sharding.make_mesh({"data": 8, "fsdp": 8}, devices=devices)
  mesh = sharding.make_mesh({"data": 8, "fsdp": 8, "allow_split_physical_axes": True}, devices)
  assert dict(mesh.shape) == {"data": 8, "fsdp": 8, "model": 1}


def test_mesh_options_are_not_axes():
  assert sharding.mesh_shape({"data": -1, "fsdp": 2, "allow_split_physical_axes": None}, 8) == (
      4, 2, 1)
  mesh = sharding.make_mesh({"data": -1, "fsdp": 2, "allow_split_physical_axes": False})
  assert dict(mesh.shape) == {"data": jax.device_count() // 2, "fsdp": 2, "model": 1}


@pytest.mark.slow
def test_command_line_sweep_on_cpu_devices(tiny_vit_teacher_dir):
  """--sweep through the command line: the real step compiled once for 4 CPU devices (remat full,
  fsdp 2, batch 8 capped at 8: the doubling and its stop at OUT OF MEMORY are the test above)."""
  env = dict(os.environ, XLA_FLAGS="")
  args = [sys.executable, "-m", "mim_jax.aot", "--config",
          "configs/maskalign_b16_clip_b16.py:runlocal=True", "--config.batch_size=8",
          f"--config.teacher.spec={tiny_vit_teacher_dir}", "--platform=cpu", "--devices", "4",
          "--sweep", "--sweep_remat=full", "--sweep_fsdp=2", "--sweep_max_batch=8",
          "--hbm_gib=100"]
  r = subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  rows = [line.split() for line in r.stdout.splitlines() if line.startswith("  full")]
  assert rows == [["full", "2", "8", "2", rows[0][4], "cap", "8"]]  # (a tiny step: 0.00 GiB)
