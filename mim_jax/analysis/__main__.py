"""`python -m mim_jax.analysis --workdir runs/x`: see `mim_jax.analysis.cli`."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from mim_jax.analysis import cli  # noqa: E402  pylint: disable=wrong-import-position

if __name__ == "__main__":
  cli.main()
