"""Ahead-of-time compilation of the real train step: a CPU mesh always, a TPU topology when
libtpu is installed (requirements-tpu.txt)."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import maskalign_b16_clip_b16
from mim_jax import aot, train
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
  real, abstract = train.load_teacher(config), aot.abstract_teacher(config)
  assert abstract == real  # same arch, grid, normalisation, dtype (params are not compared)
  assert jax.tree.map(np.shape, abstract.params) == jax.tree.map(np.shape, real.params)
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(abstract.params))


def test_abstract_clip_l14_under_a_l16_student_is_resized_without_weights():
  config = maskalign_b16_clip_b16.get_config("variant=L/16,teacher=clip_l14")
  config.teacher.dtype = "bfloat16"
  teacher = aot.abstract_teacher(config)
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
      setup.teacher.params, train.teacher_shardings(setup.teacher, setup.mesh))
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
       "--hbm_gib=1e-6"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
  assert r.returncode == 1, r.stderr[-2000:]
  assert "cpu x 4 devices" in r.stdout and "OUT OF MEMORY" in r.stdout
  assert ("compiling the maskalign step for cpu x 4: mesh {'data': 4, 'fsdp': 1, 'model': 1}, "
          "4 images per device (global 16), precision float32, remat none") in r.stdout
  r = subprocess.run([sys.executable, "-m", "mim_jax.aot", "--config",
                      "configs/maskalign_b16_clip_b16.py", "--topology", "v5e-256"],
                     capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
  assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith(
      "error: Bad topology 'v5e-256'")


def test_tpu_topology_compiles_without_a_tpu(tiny_vit_teacher_dir):
  pytest.importorskip("libtpu", reason="TPU topologies need libtpu (requirements-tpu.txt)")
  devices = aot.tpu_devices("v5e:2x2")
  assert len(devices) == 4 and aot.hbm_gib(devices) == 16
  result = aot.compile_step(tiny_config(tiny_vit_teacher_dir), devices)
  assert min(result.memory.argument, result.memory.temp, result.memory.total) > 0
  text, fits = aot.report(result, devices, aot.hbm_gib(devices))
  assert fits and "TPU v5 lite x 4 devices" in text


def test_tpu_compiler_refusing_the_step_is_out_of_memory(tiny_vit_teacher_dir):
  pytest.importorskip("libtpu", reason="TPU topologies need libtpu (requirements-tpu.txt)")
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
