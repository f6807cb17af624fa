"""A quiet console: the run's own lines (config, progress with step, loss, images/s and ETA,
evaluations, checkpoints) stand out; library chatter is down by default.

  set_env_defaults()   before TensorFlow is imported (mim_jax/__init__.py calls it): TensorFlow's
                       C++ INFO/WARNING lines off, and its oneDNN kernels off, which also removes
                       the oneDNN notice printed at import (the input pipeline decodes, crops and
                       resizes; oneDNN speeds up none of that); transformers' warnings off
                       (e.g. "PyTorch was not found" in the core install, where that is
                       expected; the export checks its loads itself). An environment value already set
                       wins, so `TF_CPP_MIN_LOG_LEVEL=0` brings everything back.
  quiet_libraries()    INFO lines of orbax, clu and TensorFlow Datasets (several per checkpoint;
                       "Downloading and preparing dataset ..." for a locally built dataset) leave
                       the console; their warnings and errors stay. TFDS progress bars off.
"""
from __future__ import annotations

import logging as py_logging
import os

ENV_DEFAULTS = {"TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "0",
                "TRANSFORMERS_VERBOSITY": "error"}
QUIET_PACKAGES = ("/orbax/", "/clu/", "/tensorflow_datasets/", "/jax/_src/xla_bridge.py")


def set_env_defaults() -> None:
  for key, value in ENV_DEFAULTS.items():
    os.environ.setdefault(key, value)


class QuietLibraries(py_logging.Filter):
  """Drops INFO (and DEBUG) records logged from the QUIET_PACKAGES; warnings still show."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    return record.levelno > py_logging.INFO or not any(
        name in record.pathname for name in QUIET_PACKAGES)


def quiet_libraries() -> None:
  from absl import logging  # pylint: disable=import-outside-toplevel
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  handler = logging.get_absl_handler()
  if not any(isinstance(f, QuietLibraries) for f in handler.filters):
    handler.addFilter(QuietLibraries())
  tfds.disable_progress_bar()
