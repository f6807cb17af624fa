r"""Entry point: train a config in a workdir (resuming from its last checkpoint).

  python -m mim_jax.main --config configs/maskalign_b16_clip_b16.py --workdir runs/ma \
      [--config.batch_size=512 --config.mask.ratio=0.5 ...]

`--config path[:arg]` passes `arg` to the file's `get_config(arg)`. Configs are locked: an
override of a key that does not exist stops the run and names the closest valid key.
"""
from __future__ import annotations

import os
import sys

from mim_jax import console  # noqa: E402  (importing the package sets the env defaults)

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:arg].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and plots go.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", None, "Call jax.distributed.initialize() (multi-host). Default: when the "
    "environment of a TPU pod / SLURM / coordinator address is detected.")
flags.mark_flags_as_required(["config", "workdir"])


_DISTRIBUTED_ENV = ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES",
                    "MEGASCALE_COORDINATOR_ADDRESS")


class ConfigError(SystemExit):
  pass


def check_overrides(argv: list[str]) -> None:
  """Refuses `--config.a.b=v` when a.b is not a key of the config, naming the closest one, or
  when another key set replaces it."""
  from mim_jax.tools import config_file  # pylint: disable=import-outside-toplevel
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec is None and "--config" in argv:
    spec = argv[argv.index("--config") + 1]
  overrides = dict((a[len("--config."):].split("=", 1) + [""])[:2] for a in argv
                   if a.startswith("--config."))
  if not spec or not overrides:
    return
  try:
    config = config_file.load(spec)
    config_file.check_keys(config, overrides, prefix="--config.")
    config_file.check_replaced(config, overrides, prefix="--config.")
  except (FileNotFoundError, KeyError, ValueError) as e:
    raise ConfigError(f"error: {e.args[0]} ({spec}).") from None


def _distributed_args() -> dict[str, int]:
  """num_processes / process_id from JAX_NUM_PROCESSES / JAX_PROCESS_ID when set.

  JAX reads JAX_COORDINATOR_ADDRESS itself, and detects TPU pods and SLURM on its own; a cluster
  it does not know (or several processes on one machine, as in tests/test_multihost.py) says
  who is who through these two variables.
  """
  names = {"num_processes": "JAX_NUM_PROCESSES", "process_id": "JAX_PROCESS_ID"}
  return {arg: int(os.environ[env]) for arg, env in names.items() if os.environ.get(env)}


HEARTBEAT_ENV = "MIM_JAX_HEARTBEAT_TIMEOUT_S"
DEFAULT_HEARTBEAT_TIMEOUT_S = 60
_SUPERVISED_ENV = "MIM_JAX_SUPERVISED"
# What the distributed runtime logs (then aborts with a stack dump) when a process of the job
# stops sending heartbeats, or this process loses the coordinator.
_PEER_LOST = "Terminating process because the JAX distributed service detected fatal errors"


def heartbeat_timeout_s() -> int:
  """Seconds without heartbeats after which a process of the job counts as dead."""
  value = os.environ.get(HEARTBEAT_ENV, str(DEFAULT_HEARTBEAT_TIMEOUT_S))
  if not value.isdigit() or int(value) < 1:
    raise ConfigError(f"error: {HEARTBEAT_ENV}={value!r} is not a whole number of seconds >= 1; "
                      f"unset it for the default {DEFAULT_HEARTBEAT_TIMEOUT_S}.")
  return int(value)


def supervise(argv: list[str]) -> int:
  """Runs this command in a child process and passes its output through, signals too; when the
  distributed runtime kills the child for a lost peer, its stack dump is replaced by one line.
  Returns the exit status."""
  import signal  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  timeout = heartbeat_timeout_s()
  child = subprocess.Popen([sys.executable, "-m", "mim_jax.main", *argv],
                           env=dict(os.environ, **{_SUPERVISED_ENV: "1"}),
                           stderr=subprocess.PIPE, text=True, errors="replace")
  for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, lambda signum, _: child.send_signal(signum))
  lost: list[str] = []
  for line in child.stderr:
    if lost or _PEER_LOST in line:
      lost.append(line.split("absl::Status:", 1)[-1].strip())
    else:
      sys.stderr.write(line)
      sys.stderr.flush()
  code = child.wait()
  if lost:
    reason = " ".join(x for x in lost[:3] if x and not x.startswith("***"))
    sys.stderr.write(
        f"error: lost another process of this job or its coordinator (dead or unreachable; "
        f"heartbeat timeout {timeout} s, ${HEARTBEAT_ENV}) [{reason[:200]}]. The checkpoints "
        f"are intact: restart every process to resume.\n")
    return 1
  return code if code >= 0 else 128 - code


def _want_distributed() -> bool:
  if _DISTRIBUTED.value is not None:
    return _DISTRIBUTED.value
  return any(k in os.environ for k in _DISTRIBUTED_ENV)


def main(argv: list[str]) -> None:
  del argv
  console.quiet_libraries()
  import jax  # pylint: disable=import-outside-toplevel
  if _want_distributed():
    jax.distributed.initialize(**_distributed_args(),
                               heartbeat_timeout_seconds=heartbeat_timeout_s())
  from mim_jax import demo, train, validate  # pylint: disable=import-outside-toplevel
  logging.info("JAX %s: process %d/%d, %d local / %d global devices", jax.__version__,
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  try:
    validate.check(_CONFIG.value, _WORKDIR.value)  # before the demo's teacher may be trained
    train.train_and_evaluate(demo.resolve_teachers(_CONFIG.value), _WORKDIR.value)
  except (OSError, ValueError) as e:  # bad input, a file or permission problem: one line, once
    if os.environ.get("MIM_JAX_TRACEBACK"):
      raise
    sys.exit(f"error: {error_text(e)}")


def error_text(e: BaseException) -> str:
  """The error's message; a permission problem with its file and what to do about it."""
  if isinstance(e, PermissionError) and e.filename:
    return (f"{e.filename}: permission denied ({e.strerror}); make it readable and writable "
            f"for this user, or choose another path.")
  if isinstance(e, OSError) and not isinstance(e, FileNotFoundError) and e.filename:
    return f"{e.filename}: {e.strerror or e}."
  return str(e)


def _distributed_in(argv: list[str]) -> bool:
  """`_want_distributed` before absl parses the flags: the last --[no]distributed, else the
  environment."""
  for arg in reversed(argv):
    if arg in ("--distributed", "--distributed=true", "--distributed=True"):
      return True
    if arg in ("--nodistributed", "--distributed=false", "--distributed=False"):
      return False
  return any(k in os.environ for k in _DISTRIBUTED_ENV)


def run() -> None:
  check_overrides(sys.argv[1:])
  if _distributed_in(sys.argv[1:]) and not os.environ.get(_SUPERVISED_ENV):
    sys.exit(supervise(sys.argv[1:]))
  app.run(main)


if __name__ == "__main__":
  run()
