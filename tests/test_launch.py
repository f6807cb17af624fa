"""Launch scripts: syntax, and the commands they print (--dry-run) or run (against a fake gcloud
that only records its arguments: nothing here reaches a cloud)."""
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from mim_jax.tools import config_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU_VM = os.path.join(ROOT, "launch", "tpu_vm.sh")
SLURM = os.path.join(ROOT, "launch", "slurm_gpu.sbatch")
BASH = shutil.which("bash")


@pytest.fixture
def fake_bin(tmp_path):
  """A PATH entry whose `gcloud` appends its arguments to calls.txt; put first in PATH."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  gcloud = bin_dir / "gcloud"
  gcloud.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path}/calls.txt\n')
  gcloud.chmod(0o755)
  return bin_dir


def run(script, args, env_extra, path):
  env = {"PATH": path, "HOME": os.environ.get("HOME", "/tmp"), **env_extra}
  return subprocess.run([BASH, script, *args], capture_output=True, text=True, env=env,
                        timeout=60)


def commands(stdout: str) -> list[str]:
  return [line[2:] for line in stdout.splitlines() if line.startswith("+ ")]


@pytest.mark.parametrize("script", [TPU_VM, SLURM])
def test_scripts_parse(script):
  assert subprocess.run([BASH, "-n", script]).returncode == 0


def test_tpu_vm_dry_run_prints_every_step_and_runs_nothing(fake_bin, tmp_path):
  env = {"PROJECT": "proj", "ZONE": "us-west4-a", "ACCELERATOR": "v5litepod-256",
         "NAME": "mim", "WORKDIR": "gs://bucket/runs/x", "DATA_DIR": "gs://bucket/tfds"}
  r = run(TPU_VM, ["--dry-run", "all", "--", "--config.batch_size=4096"], env,
          f"{fake_bin}:{os.environ['PATH']}")
  assert r.returncode == 0, r.stderr
  assert not (tmp_path / "calls.txt").exists()  # printed, never run
  check, create, archive, scp, untar, setup, train = commands(r.stdout)
  assert check.startswith("python -m mim_jax.aot --config configs/maskalign_b16_clip_b16.py "
                          "--topology v5e:16x16 --config.batch_size=4096")
  assert create == ("gcloud compute tpus tpu-vm create mim --project proj --zone us-west4-a "
                    "--accelerator-type v5litepod-256 --version v2-alpha-tpuv5-lite")
  assert archive.startswith("git -C ") and "archive" in archive and archive.endswith("HEAD")
  assert "tpu-vm scp" in scp and "--worker=all" in scp
  for line in (untar, setup, train):
    assert line.startswith("gcloud compute tpus tpu-vm ssh mim --project proj --zone us-west4-a "
                           "--worker=all --command ")
  assert "pip install -q -r requirements.txt -r requirements-tpu.txt" in setup
  assert (".venv/bin/python -m mim_jax.main --config configs/maskalign_b16_clip_b16.py "
          "--workdir gs://bucket/runs/x --distributed --config.data.data_dir=gs://bucket/tfds "
          "--config.batch_size=4096") in train


def test_tpu_vm_queued_resource_and_topology_of_v5p(fake_bin, tmp_path):
  env = {"ACCELERATOR": "v5p-64", "QUEUED": "1", "SPOT": "1", "NAME": "q"}
  r = run(TPU_VM, ["--dry-run", "check", "create", "delete"], env,
          f"{fake_bin}:{os.environ['PATH']}")
  assert r.returncode == 0, r.stderr
  check, create, describe, delete = commands(r.stdout)
  assert "--topology v5p:2x4x4" in check  # v5p-64: 64 TensorCores, 32 chips
  assert create.startswith("gcloud compute tpus queued-resources create q ")
  assert "--node-id q --accelerator-type v5p-64 --runtime-version v2-alpha-tpuv5 --spot" in create
  assert "queued-resources describe q" in describe
  assert delete.startswith("gcloud compute tpus queued-resources delete q ")


def test_tpu_vm_runs_gcloud_on_all_workers(fake_bin, tmp_path):
  env = {"NAME": "mim", "WORKDIR": "gs://b/w", "REPO_URL": "https://example.invalid/mim.git"}
  r = run(TPU_VM, ["copy", "train", "--", "--config.total_steps=10"], env,
          f"{fake_bin}:{os.environ['PATH']}")
  assert r.returncode == 0, r.stderr
  calls = (tmp_path / "calls.txt").read_text().splitlines()
  assert len(calls) == 2 and all("--worker=all" in c for c in calls)
  assert "git clone --depth 1 --branch main https://example.invalid/mim.git mim_jax" in calls[0]
  assert "--distributed --config.total_steps=10" in calls[1]


def test_tpu_vm_refuses_without_gcloud_or_workdir(tmp_path):
  bin_dir = tmp_path / "nogcloud"
  bin_dir.mkdir()
  for tool in ("dirname",):
    os.symlink(shutil.which(tool), bin_dir / tool)
  r = run(TPU_VM, ["create"], {}, str(bin_dir))
  assert r.returncode == 1 and "gcloud not found" in r.stderr
  r = run(TPU_VM, ["--dry-run", "train"], {}, os.environ["PATH"])
  assert r.returncode == 2 and "set WORKDIR" in r.stderr
  r = run(TPU_VM, ["--dry-run", "create"], {"ACCELERATOR": "v3-8"}, os.environ["PATH"])
  assert r.returncode == 2 and "unknown accelerator" in r.stderr


def test_slurm_dry_run_one_process_per_gpu_or_per_node():
  env = {"CONFIG": "configs/mae_b16.py", "WORKDIR": "/shared/w", "SLURM_JOB_ID": "7"}
  r = run(SLURM, ["--dry-run", "--config.batch_size=512"], env, os.environ["PATH"])
  assert r.returncode == 0, r.stderr
  (cmd,) = commands(r.stdout)
  assert cmd.startswith("srun --kill-on-bad-exit=1 ")
  assert cmd.endswith("-m mim_jax.main --config configs/mae_b16.py --workdir /shared/w "
                      "--distributed --config.batch_size=512")
  # One task per node: that process must see all of the node's GPUs.
  r = run(SLURM, ["--dry-run"], dict(env, SLURM_NTASKS_PER_NODE="1", SLURM_GPUS_ON_NODE="4"),
          os.environ["PATH"])
  assert commands(r.stdout)[0] == "export JAX_LOCAL_DEVICE_IDS=0,1,2,3"


def test_tpu_vm_ssh_passes_a_shell_line_to_every_worker(fake_bin, tmp_path):
  r = run(TPU_VM, ["ssh", "--", "mkdir -p a && tail -n 3 mim_jax/train.log"], {"NAME": "mim"},
          f"{fake_bin}:{os.environ['PATH']}")
  assert r.returncode == 0, r.stderr
  (call,) = (tmp_path / "calls.txt").read_text().splitlines()
  assert call.endswith("--worker=all --command mkdir -p a && tail -n 3 mim_jax/train.log")


# --- SLURM: what each task runs, and what jax.distributed.initialize() makes of it -------------
TASK_LINE = re.compile(r"^task (\d+) on (\S+) \(node (\d+), local (\d+)\): process (\d+) of "
                       r"(\d+), GPUs ([\d,]+): (.*)$")
slurm_tasks = config_file.load_module(os.path.join(ROOT, "launch", "slurm_tasks.py"))


def tasks_of(stdout: str) -> list[tuple[dict, dict[str, str], list[str]]]:
  """Per task line: (its header fields, the variables it sets, the command it runs)."""
  out = []
  for line in stdout.splitlines():
    m = TASK_LINE.match(line)
    if not m:
      continue
    words = shlex.split(m.group(8))
    n = next(i for i, w in enumerate(words) if not re.match(r"^[A-Z_]+=", w))
    env = dict(w.split("=", 1) for w in words[:n])
    head = dict(rank=int(m.group(1)), host=m.group(2), node=int(m.group(3)),
                local=int(m.group(4)), process=int(m.group(5)), of=int(m.group(6)),
                gpus=[int(g) for g in m.group(7).split(",")])
    out.append((head, env, words[n:]))
  return out


def jax_sees(monkeypatch, env: dict[str, str]) -> tuple:
  """(coordinator, processes, process id, local device ids) as jax.distributed.initialize()
  derives them in a task with this environment: its own first lines, then jax's SLURM
  detection (named, so that no other cluster is probed)."""
  from jax._src import clusters  # pylint: disable=import-outside-toplevel
  for key in list(os.environ):
    if key.startswith(("SLURM_", "JAX_COORDINATOR", "JAX_LOCAL_DEVICE")):
      monkeypatch.delenv(key)
  for key, value in env.items():
    monkeypatch.setenv(key, value)
  coordinator = os.environ.get("JAX_COORDINATOR_ADDRESS")
  ids = os.environ.get("JAX_LOCAL_DEVICE_IDS")
  local = [int(i) for i in ids.split(",")] if ids else None
  return tuple(clusters.ClusterEnv.auto_detect_unset_distributed_params(
      coordinator, None, None, local, "slurm", 300))


def test_slurm_dry_run_prints_every_task_and_jax_reads_the_ranks_from_it(monkeypatch):
  env = {"CONFIG": "configs/mae_b16.py", "WORKDIR": "/shared/runs/a b", "VENV": "/opt/venv",
         "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu[07-08]",
         "SLURM_NTASKS_PER_NODE": "4", "SLURM_GPUS_ON_NODE": "4"}
  r = run(SLURM, ["--dry-run", "--config.batch_size=512"], env, os.environ["PATH"])
  assert r.returncode == 0, r.stderr
  (srun,) = commands(r.stdout)
  main = ["/opt/venv/bin/python", "-m", "mim_jax.main", "--config", "configs/mae_b16.py",
          "--workdir", "/shared/runs/a b", "--distributed", "--config.batch_size=512"]
  coordinator = f"gpu07:{4242 % 4096 + 61440}"
  assert shlex.split(srun) == ["srun", "--kill-on-bad-exit=1", "--cpu-bind=none",
                               f"--export=ALL,JAX_COORDINATOR_ADDRESS={coordinator}", *main]
  found = tasks_of(r.stdout)
  assert [head["rank"] for head, _, _ in found] == list(range(8))
  for head, task_env, command in found:
    rank = head["rank"]
    assert (head["host"], head["node"], head["local"]) == (f"gpu0{7 + rank // 4}", rank // 4,
                                                           rank % 4)
    assert (head["process"], head["of"], head["gpus"]) == (rank, 8, [rank % 4])
    assert command == main
    assert "JAX_LOCAL_DEVICE_IDS" not in task_env  # one GPU per process: SLURM_LOCALID's
    assert jax_sees(monkeypatch, task_env) == (coordinator, 8, rank, [rank % 4])
  # Without the address the script passes, jax finds the same coordinator on this node list.
  from jax._src.clusters.slurm_cluster import SlurmCluster  # pylint: disable=import-outside-toplevel
  monkeypatch.delenv("JAX_COORDINATOR_ADDRESS")
  assert SlurmCluster.get_coordinator_address(None, None) == coordinator


def test_slurm_dry_run_one_process_per_node_sees_all_gpus(monkeypatch):
  # Host names with text after a bracket group: jax's own parser would name host "rack1".
  env = {"WORKDIR": "/w", "SLURM_JOB_ID": "99", "SLURM_JOB_NODELIST": "rack[1-2]-n[01-02]",
         "SLURM_NTASKS_PER_NODE": "1", "SLURM_GPUS_PER_NODE": "h100:8", "JAX_COORDINATOR_PORT": "7000"}
  r = run(SLURM, ["--dry-run"], env, os.environ["PATH"])
  assert r.returncode == 0, r.stderr
  assert commands(r.stdout)[0] == "export JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7"
  found = tasks_of(r.stdout)
  assert [head["host"] for head, _, _ in found] == ["rack1-n01", "rack1-n02", "rack2-n01",
                                                    "rack2-n02"]
  for head, task_env, command in found:
    assert head["gpus"] == list(range(8)) and head["local"] == 0
    assert command[-3:] == ["--workdir", "/w", "--distributed"]
    assert jax_sees(monkeypatch, task_env) == ("rack1-n01:7000", 4, head["rank"], list(range(8)))


def test_slurm_outside_a_job_runs_nothing_and_the_dry_run_uses_placeholders():
  r = run(SLURM, [], {"WORKDIR": "/w"}, os.environ["PATH"])
  assert r.returncode == 2 and r.stderr.startswith("error: not inside a SLURM job")
  r = run(SLURM, ["--dry-run"], {"WORKDIR": "/w", "SLURM_NNODES": "3"}, os.environ["PATH"])
  assert r.returncode == 0, r.stderr
  assert "placeholder nodes node[1-3]" in r.stdout and len(tasks_of(r.stdout)) == 24


def test_hostlist_expansion_and_its_errors():
  assert slurm_tasks.expand_hostlist("gpu[007-009,011],big01,n[1-2].ib") == [
      "gpu007", "gpu008", "gpu009", "gpu011", "big01", "n1.ib", "n2.ib"]
  assert slurm_tasks.expand_hostlist("a[9-10]") == ["a9", "a10"]
  for bad in ("n[1-2", "n[a-b]", "n[[1]]"):
    with pytest.raises(ValueError):
      slurm_tasks.expand_hostlist(bad)
  r = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "slurm_tasks.py"),
                      "coordinator", "n[1-"], capture_output=True, text=True)
  assert r.returncode == 2 and r.stderr.startswith("error: ")


def test_local_setup_with_the_gpu_extra_installs_requirements_gpu(tmp_path):
  """The README's GPU line: MIM_JAX_EXTRAS=gpu adds requirements-gpu.txt to the install (a stub
  venv python records the pip calls); an unknown extra is refused in one line."""
  venv = tmp_path / "venv"
  (venv / "bin").mkdir(parents=True)
  stub = venv / "bin" / "python"
  stub.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path}/pip.txt\n')
  stub.chmod(0o755)
  local = os.path.join(ROOT, "launch", "local.sh")
  r = run(local, ["setup"], {"MIM_JAX_VENV": str(venv), "MIM_JAX_EXTRAS": "gpu"},
          os.environ["PATH"])
  assert r.returncode == 0, r.stderr
  assert (tmp_path / "pip.txt").read_text().splitlines()[-1] == (
      "-m pip install --quiet -r requirements.txt -r requirements-gpu.txt")
  r = run(local, ["setup"], {"MIM_JAX_VENV": str(venv), "MIM_JAX_EXTRAS": "cuda"},
          os.environ["PATH"])
  assert r.returncode == 2 and r.stderr.startswith("error: MIM_JAX_EXTRAS names 'cuda'")
  assert "gpu" in r.stderr
