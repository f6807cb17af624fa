"""The console and the core install: library chatter filtered, no torch on the core path."""
import logging
import os
import subprocess
import sys

from mim_jax import console


def record(path: str, level: int) -> logging.LogRecord:
  return logging.LogRecord("absl", level, path, 1, "msg", None, None)


def test_quiet_libraries_drops_their_info_lines_only():
  f = console.QuietLibraries()
  site = "/venv/lib/python3.11/site-packages"
  assert not f.filter(record(f"{site}/orbax/checkpoint/manager.py", logging.INFO))
  assert not f.filter(record(f"{site}/tensorflow_datasets/core/builder.py", logging.INFO))
  assert f.filter(record(f"{site}/orbax/checkpoint/manager.py", logging.WARNING))
  assert f.filter(record("/repo/mim_jax/train.py", logging.INFO))


def test_env_defaults_do_not_override_the_user():
  assert os.environ.get("TF_ENABLE_ONEDNN_OPTS") is not None  # set when mim_jax was imported
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0"}
  env.pop("TF_ENABLE_ONEDNN_OPTS", None)
  out = subprocess.run([sys.executable, "-c", "import os, mim_jax; print(os.environ["
                        "'TF_CPP_MIN_LOG_LEVEL'], os.environ['TF_ENABLE_ONEDNN_OPTS'])"],
                       env=env, capture_output=True, text=True, check=True).stdout.split()
  assert out == ["0", "0"]


def test_training_demo_and_export_never_import_torch():
  """The core install has no torch: every module of the training, demo, AOT and export path
  imports, and a transformers export is written, with torch made unimportable."""
  code = """
import sys


import importlib.machinery


class NoTorch(importlib.machinery.PathFinder):  # as if torch were not installed
  @classmethod
  def find_spec(cls, name, path=None, target=None):
    if name.split(".")[0] == "torch":
      return None
    return super().find_spec(name, path, target)


sys.meta_path = [NoTorch if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
import tempfile
import jax, numpy as np
from mim_jax import aot, demo, export, init_from, main, train
from mim_jax.models.vit import ViT
vit = ViT(patch=4, width=16, depth=1, num_heads=2, mlp_dim=32, image_size=8)
params = vit.init(jax.random.key(0), np.zeros((1, 8, 8, 3)))["params"]
export.export_hf(params, vit, tempfile.mkdtemp())
export.export_timm(params, vit, tempfile.mkdtemp())
assert "torch" not in sys.modules
print("ok")
"""
  run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=os.path.dirname(os.path.dirname(__file__)), timeout=300)
  assert run.stdout.strip().endswith("ok"), run.stderr[-3000:]
