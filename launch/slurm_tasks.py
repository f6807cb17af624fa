"""The tasks of a SLURM job step, as launch/slurm_gpu.sbatch starts them (standard library only:
it runs on a login node before any environment exists).

  python3 launch/slurm_tasks.py coordinator 'gpu[007-008],big01'  # -> gpu007:61586 (job 4242)
  python3 launch/slurm_tasks.py plan -- python -m mim_jax.main ...  # one line per task

`plan` reads the job from the environment the batch script sees (SLURM_JOB_ID,
SLURM_JOB_NODELIST, SLURM_NTASKS_PER_NODE, JAX_COORDINATOR_ADDRESS, JAX_LOCAL_DEVICE_IDS,
SLURM_GPUS_ON_NODE) and prints, for every task `srun` starts (block distribution: tasks
0..n-1 on the first node, and so on), the variables `jax.distributed.initialize()` reads in that
task and the command it runs:

  task 9 on gpu008 (node 1, local 1): process 9 of 16, GPUs 1: SLURM_JOB_ID=... CMD...

What jax 0.10.2 reads (jax/_src/distributed.py, jax/_src/clusters/slurm_cluster.py): the
coordinator from JAX_COORDINATOR_ADDRESS, else from the first host of SLURM_STEP_NODELIST and
port SLURM_JOB_ID % 4096 + 61440 (or JAX_COORDINATOR_PORT); the number of processes from
SLURM_NTASKS; the process id from SLURM_PROCID; the visible GPUs from JAX_LOCAL_DEVICE_IDS,
else [SLURM_LOCALID]. SLURM detection needs all of SLURM_JOB_ID, SLURM_STEP_NODELIST,
SLURM_NTASKS, SLURM_PROCID and SLURM_LOCALID. jax reads the first host off the node list's text
(the part before the first bracket and the first number inside it), which misnames hosts with
text after a bracket group ('n[1-2].ib', 'rack[1-2]-n[01-02]'); so the batch script passes
JAX_COORDINATOR_ADDRESS from `coordinator`: the first host of SLURM's full hostlist syntax at
jax's port.
"""
from __future__ import annotations

import os
import shlex
import sys
from typing import Iterator, Mapping, NamedTuple, Optional, Sequence

PORT_BASE = 65535 - 2 ** 12 + 1  # jax's SLURM port range: [61440, 65535]


def split_top_level(spec: str) -> list[str]:
  """'a[1-2],b' -> ['a[1-2]', 'b']: commas outside brackets separate host expressions."""
  parts, depth, start = [], 0, 0
  for i, ch in enumerate(spec):
    depth += {"[": 1, "]": -1}.get(ch, 0)
    if depth not in (0, 1):
      raise ValueError(f"nested or unbalanced brackets in the node list {spec!r}")
    if ch == "," and depth == 0:
      parts.append(spec[start:i])
      start = i + 1
  if depth:
    raise ValueError(f"unbalanced brackets in the node list {spec!r}")
  parts.append(spec[start:])
  return [p for p in parts if p]


def _numbers(body: str) -> Iterator[str]:
  """'001-003,7' -> '001', '002', '003', '7' (the width of a range's first number is kept)."""
  for item in body.split(","):
    lo, _, hi = item.partition("-")
    if not lo.isdigit() or (hi and not hi.isdigit()):
      raise ValueError(f"bad range {item!r} in a node list")
    for n in range(int(lo), int(hi or lo) + 1):
      yield str(n).zfill(len(lo))


def expand_one(expr: str) -> list[str]:
  """'rack[1-2]-n[01-02]' -> rack1-n01, rack1-n02, rack2-n01, rack2-n02 (SLURM's order)."""
  if "[" not in expr:
    return [expr]
  prefix, rest = expr.split("[", 1)
  body, rest = rest.split("]", 1)
  tails = expand_one(rest)
  return [prefix + n + tail for n in _numbers(body) for tail in tails]


def expand_hostlist(spec: str) -> list[str]:
  """SLURM's hostlist syntax -> host names, in order (what `scontrol show hostnames` prints)."""
  return [host for expr in split_top_level(spec.strip()) for host in expand_one(expr)]


def coordinator_address(first_host: str, job_id: int, port: Optional[str] = None) -> str:
  """host:port as jax's SLURM detection makes it (port from JAX_COORDINATOR_PORT if given)."""
  return f"{first_host}:{port or job_id % 2 ** 12 + PORT_BASE}"


class Task(NamedTuple):
  rank: int  # SLURM_PROCID, jax's process id
  node: int  # SLURM_NODEID
  host: str
  local: int  # SLURM_LOCALID
  gpus: tuple[int, ...]  # what jax makes visible: JAX_LOCAL_DEVICE_IDS, else (SLURM_LOCALID,)


def tasks(hosts: Sequence[str], per_node: int,
          local_device_ids: Optional[Sequence[int]] = None) -> list[Task]:
  """srun's block distribution: tasks 0..per_node-1 on hosts[0], the next on hosts[1], ..."""
  return [Task(rank=node * per_node + local, node=node, host=host, local=local,
               gpus=tuple(local_device_ids) if local_device_ids else (local,))
          for node, host in enumerate(hosts) for local in range(per_node)]


def task_env(task: Task, *, job_id: int, nodelist: str, num_tasks: int, coordinator: str,
             local_device_ids: str = "") -> dict[str, str]:
  """The variables jax.distributed.initialize() reads in this task."""
  env = {"SLURM_JOB_ID": str(job_id), "SLURM_STEP_NODELIST": nodelist,
         "SLURM_NTASKS": str(num_tasks), "SLURM_PROCID": str(task.rank),
         "SLURM_LOCALID": str(task.local), "JAX_COORDINATOR_ADDRESS": coordinator}
  if local_device_ids:
    env["JAX_LOCAL_DEVICE_IDS"] = local_device_ids
  return env


def plan_lines(environ: Mapping[str, str], command: Sequence[str]) -> list[str]:
  """One line per task of the job described by `environ` (see the module docstring)."""
  nodelist = environ["SLURM_JOB_NODELIST"]
  hosts = expand_hostlist(nodelist)
  per_node = int(environ.get("SLURM_NTASKS_PER_NODE", "8"))
  job_id = int(environ.get("SLURM_JOB_ID", "0"))
  coordinator = environ.get("JAX_COORDINATOR_ADDRESS") or coordinator_address(
      hosts[0], job_id, environ.get("JAX_COORDINATOR_PORT"))
  ids = environ.get("JAX_LOCAL_DEVICE_IDS", "")
  all_tasks = tasks(hosts, per_node, [int(i) for i in ids.split(",")] if ids else None)
  cmd = " ".join(shlex.quote(c) for c in command)
  lines = []
  for t in all_tasks:
    env = task_env(t, job_id=job_id, nodelist=nodelist, num_tasks=len(all_tasks),
                   coordinator=coordinator, local_device_ids=ids)
    assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    lines.append(f"task {t.rank} on {t.host} (node {t.node}, local {t.local}): process "
                 f"{t.rank} of {len(all_tasks)}, GPUs {','.join(map(str, t.gpus))}: "
                 f"{assignments} {cmd}")
  return lines


def main(argv: Sequence[str]) -> int:
  try:
    if len(argv) == 2 and argv[0] == "coordinator":
      print(coordinator_address(expand_hostlist(argv[1])[0],
                                int(os.environ.get("SLURM_JOB_ID", "0")),
                                os.environ.get("JAX_COORDINATOR_PORT")))
      return 0
    if argv[:2] == ["plan", "--"] and len(argv) > 2:
      print("\n".join(plan_lines(os.environ, argv[2:])))
      return 0
  except (ValueError, IndexError, KeyError) as e:
    print(f"error: {e}: check SLURM_JOB_NODELIST / SLURM_NTASKS_PER_NODE / SLURM_JOB_ID",
          file=sys.stderr)
    return 2
  print("usage: slurm_tasks.py coordinator NODELIST | plan -- COMMAND...", file=sys.stderr)
  return 2


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
