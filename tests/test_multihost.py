"""Multi-host training with two local processes (4 simulated CPU devices each, gloo collectives)
joined by `jax.distributed` on 127.0.0.1: the path a TPU pod or a GPU cluster takes.

Why not "equal to a single-process run": each host reads its own `tfds.even_splits` share of the
split and shuffles and augments it with its own seeds, so the global batches of a two-host run are
made of different examples than those of one process with 8 devices (which reads the whole split).
What is asserted instead: the hosts read disjoint shares that together are the split; the
two-process run is deterministic, also across a multi-host resume; metrics are written by process
0 only; the checkpoint is written once, by all hosts through orbax, and restores on one process.
"""
import json
import os
import socket
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

from configs import maskalign_b16_clip_b16
from mim_jax import assembly, checkpoint as ckpt_lib, sharding, step as step_lib
from mim_jax.data import digits, input_pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/maskalign_b16_clip_b16.py:runlocal=True"

pytestmark = pytest.mark.slow

# Each process saves its rows of one pass over the eval split (`eval_rows` below).
_EVAL_DRIVER = """
import os, sys
import jax, numpy as np
jax.distributed.initialize(num_processes=2, process_id=int(os.environ["JAX_PROCESS_ID"]))
from mim_jax import sharding
from test_multihost import eval_rows
np.save(f"{sys.argv[1]}{jax.process_index()}.npy", eval_rows(sharding.make_mesh({"data": -1})))
"""


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
  """The three training launches compile the same programs: once is enough."""
  path = str(tmp_path_factory.mktemp("jax_cache"))
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("JAX_COMPILATION_CACHE_DIR", path)
    mp.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    yield path


def run_two_processes(args: list[str], log_prefix: str, timeout: int = 300) -> None:
  """Runs `python <args>` as processes 0 and 1 of one job; both must exit 0."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{free_port()}",
             JAX_NUM_PROCESSES="2", PYTHONPATH=f"{ROOT}:{os.path.join(ROOT, 'tests')}")
  procs, logs = [], []
  for i in range(2):
    logs.append(open(f"{log_prefix}.{i}.log", "w"))
    procs.append(subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=logs[i],
                                  stderr=subprocess.STDOUT,
                                  env=dict(env, JAX_PROCESS_ID=str(i))))
  try:
    codes = [p.wait(timeout=timeout) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
    for f in logs:
      f.close()
  for i, code in enumerate(codes):
    with open(f"{log_prefix}.{i}.log") as f:
      assert code == 0, f"process {i} exited {code}:\n{f.read()[-3000:]}"


def train_two_hosts(workdir: str, teacher_dir: str, total_steps: int) -> None:
  run_two_processes(["-m", "mim_jax.main", "--config", CONFIG, "--workdir", workdir,
                     f"--config.teacher.spec={teacher_dir}",
                     f"--config.total_steps={total_steps}", "--distributed"],
                    log_prefix=workdir)


def losses(workdir: str) -> dict[int, float]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  assert len(records) == len({r["step"] for r in records}), "metrics written by several hosts"
  return {r["step"]: r["loss"] for r in records}


def restore_on_one_process(workdir: str, teacher_dir: str):
  config = maskalign_b16_clip_b16.get_config("runlocal=True")
  config.teacher.spec = teacher_dir
  setup = assembly.make_setup(config, assembly.load_teacher(config),
                              sharding.make_mesh(config.mesh), 4, 1)
  abstract, shardings = step_lib.state_shardings(setup)
  return ckpt_lib.restore(ckpt_lib.manager(workdir), abstract, shardings)


@pytest.fixture(scope="module")
def built_digits(tfds_data_dir):
  digits.ensure_built(tfds_data_dir)  # once, before two processes would race to build it
  return tfds_data_dir


def eval_rows(mesh) -> np.ndarray:
  """This process's valid rows of one pass over the runlocal eval split, [n, H * W * 3]: no
  augmentation, so the same example gives the same row on any host."""
  c = maskalign_b16_clip_b16.get_config("runlocal=True")
  rows = []
  for batch in input_pipeline.make_eval_iterator(c.data, global_batch_size=c.batch_size,
                                                 mesh=mesh):
    for image, valid in zip(batch["image"].addressable_shards, batch["valid"].addressable_shards):
      rows.append(np.asarray(image.data)[np.asarray(valid.data)])
  return np.concatenate(rows).reshape(-1, np.prod(rows[0].shape[1:]))


def as_multiset(rows: np.ndarray) -> list[bytes]:
  return sorted(r.tobytes() for r in rows)


def test_hosts_read_disjoint_shares_that_make_the_split(tmp_path, built_digits):
  out = str(tmp_path / "rows")
  run_two_processes(["-c", _EVAL_DRIVER, out], log_prefix=out)
  hosts = [np.load(f"{out}{i}.npy") for i in range(2)]
  everything = eval_rows(sharding.make_mesh({"data": -1}))  # one process reads the whole split
  assert abs(len(hosts[0]) - len(hosts[1])) <= 1  # even_splits: halves
  assert as_multiset(hosts[0]) != as_multiset(hosts[1])
  # Together the hosts saw every example exactly once.
  assert as_multiset(np.concatenate(hosts)) == as_multiset(everything)


def test_two_processes_train_deterministically_and_checkpoint_once(tmp_path, built_digits,
                                                                  tiny_vit_teacher_dir):
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  train_two_hosts(straight, tiny_vit_teacher_dir, 4)
  train_two_hosts(resumed, tiny_vit_teacher_dir, 2)
  train_two_hosts(resumed, tiny_vit_teacher_dir, 4)  # both hosts restore step 2, go on to 4

  a, b = losses(straight), losses(resumed)  # process 0 alone writes: one record per step
  assert sorted(a) == sorted(b) == [1, 2, 3, 4]
  assert a == b  # bit-identical losses, across a multi-host resume too
  assert all(np.isfinite(list(a.values())))
  assert sorted(os.listdir(os.path.join(straight, "checkpoints"))) == ["2", "4"]

  step_a, state_a = restore_on_one_process(straight, tiny_vit_teacher_dir)
  step_b, state_b = restore_on_one_process(resumed, tiny_vit_teacher_dir)
  assert step_a == step_b == 4
  assert jax.device_count() == 8 and jax.process_count() == 1
  chex.assert_trees_all_equal(jax.device_get(state_a), jax.device_get(state_b))


@pytest.mark.parametrize("victim", [1, 0])  # a worker; the coordinator
def test_survivor_of_a_dead_peer_ends_with_one_line(tmp_path, built_digits, tiny_vit_teacher_dir,
                                                    victim):
  """SIGKILL one of two processes mid-training: the other ends within the heartbeat timeout
  (+ a few seconds) with exit status 1 and one `error:` line (no runtime stack dump)."""
  import signal
  import time
  workdir = str(tmp_path / "run")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{free_port()}",
             JAX_NUM_PROCESSES="2", PYTHONPATH=ROOT, MIM_JAX_HEARTBEAT_TIMEOUT_S="10")
  procs = [subprocess.Popen(
      [sys.executable, "-m", "mim_jax.main", "--config", CONFIG, "--workdir", workdir,
       f"--config.teacher.spec={tiny_vit_teacher_dir}", "--config.total_steps=100000",
       "--config.checkpoint_every=100000", "--distributed"], cwd=ROOT,
      env=dict(env, JAX_PROCESS_ID=str(i)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
      text=True, start_new_session=True) for i in range(2)]
  try:
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 240
    while time.time() < deadline and not (os.path.exists(metrics) and
                                          len(open(metrics).readlines()) >= 2):
      time.sleep(0.5)
    os.killpg(procs[victim].pid, signal.SIGKILL)  # the whole host: supervisor and trainer
    killed = time.time()
    _, err = procs[1 - victim].communicate(timeout=120)
    took = time.time() - killed
  finally:
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
  assert procs[1 - victim].returncode == 1
  last = err.strip().splitlines()[-1]
  assert last.startswith("error: lost another process of this job"), err[-3000:]
  assert "Check failure stack trace" not in err and "Fatal Python error" not in err
  assert took < 10 + 15, took
