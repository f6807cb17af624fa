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


class ConfigError(SystemExit):
  pass


def check_overrides(argv: list[str]) -> None:
  """Refuses `--config.a.b=v` when a.b is not a key of the config, naming the closest one."""
  from mim_jax.tools import config_file  # pylint: disable=import-outside-toplevel
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec is None and "--config" in argv:
    spec = argv[argv.index("--config") + 1]
  keys = [a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")]
  if not spec or not keys:
    return
  try:
    config_file.check_keys(config_file.load(spec), keys, prefix="--config.")
  except (FileNotFoundError, KeyError) as e:
    raise ConfigError(f"error: {e.args[0]} ({spec}).") from None


def _distributed_args() -> dict[str, int]:
  """num_processes / process_id from JAX_NUM_PROCESSES / JAX_PROCESS_ID when set.

  JAX reads JAX_COORDINATOR_ADDRESS itself, and detects TPU pods and SLURM on its own; a cluster
  it does not know (or several processes on one machine, as in tests/test_multihost.py) says
  who is who through these two variables.
  """
  names = {"num_processes": "JAX_NUM_PROCESSES", "process_id": "JAX_PROCESS_ID"}
  return {arg: int(os.environ[env]) for arg, env in names.items() if os.environ.get(env)}


def _want_distributed() -> bool:
  if _DISTRIBUTED.value is not None:
    return _DISTRIBUTED.value
  return any(k in os.environ for k in ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID",
                                       "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS"))


def main(argv: list[str]) -> None:
  del argv
  console.quiet_libraries()
  import jax  # pylint: disable=import-outside-toplevel
  if _want_distributed():
    jax.distributed.initialize(**_distributed_args())
  from mim_jax import train  # pylint: disable=import-outside-toplevel
  logging.info("JAX %s: process %d/%d, %d local / %d global devices", jax.__version__,
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (FileNotFoundError, ValueError) as e:
    if os.environ.get("MIM_JAX_TRACEBACK"):
      raise
    logging.error("%s", e)
    sys.exit(f"error: {e}")


def run() -> None:
  check_overrides(sys.argv[1:])
  app.run(main)


if __name__ == "__main__":
  run()
