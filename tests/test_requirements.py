"""The optional requirement files against the pinned core: the GPU file pins the core's jax, and
pip resolves the core and the GPU file together (no GPU needed).

The resolution is `pip install --dry-run --report` with `--use-feature=fast-deps`: PyPI has no
separate metadata file (PEP 658) for some wheels, the nvidia-* CUDA wheels among them, and for
those plain pip downloads whole wheels to read their dependencies (3.3 GB, 40-70 s, measured
here); fast-deps reads each wheel's metadata with HTTP range requests instead (3.5 MB; 30 s
here on a cold pip cache, 60 s on a busy machine, most of it round trips). It needs the package index: when the index is unreachable
the test skips and says so.
"""
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIN = re.compile(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^\s;#]+)")


def pins(name: str) -> dict[str, str]:
  """{normalised package name: pinned version} of a requirements file's `name==version` lines."""
  with open(os.path.join(ROOT, name)) as f:
    found = (PIN.match(line.strip()) for line in f)
    return {normalise(m.group(1)): m.group(3) for m in found if m}


def normalise(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def test_gpu_file_pins_the_core_jax():
  core, gpu = pins("requirements.txt"), pins("requirements-gpu.txt")
  assert gpu == {"jax": core["jax"]}
  with open(os.path.join(ROOT, "requirements-gpu.txt")) as f:
    assert "jax[cuda12]==" in f.read()  # the CUDA 12 plugin and its CUDA wheels


def index_url() -> str:
  """The package index pip uses here (PIP_INDEX_URL, pip's config, else PyPI)."""
  url = os.environ.get("PIP_INDEX_URL", "")
  if not url:
    r = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                       capture_output=True, text=True, timeout=60)
    url = r.stdout.strip() if r.returncode == 0 else ""
  return (url or "https://pypi.org/simple").rstrip("/")


@pytest.mark.slow
def test_core_and_gpu_requirements_resolve_together(tmp_path):
  url = f"{index_url()}/jax-cuda12-plugin/"
  try:
    urllib.request.urlopen(url, timeout=30).close()
  except (urllib.error.URLError, OSError) as e:
    pytest.skip(f"the package index is unreachable ({url}: {e}); the GPU requirements need it "
                "to resolve")
  report = tmp_path / "report.json"
  r = subprocess.run(
      [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
       "--use-feature=fast-deps", "--retries", "2", "--timeout", "60", "--report", str(report),
       "-r", "requirements.txt", "-r", "requirements-gpu.txt"],
      cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  installed = {normalise(item["metadata"]["name"]): item["metadata"]["version"]
               for item in json.loads(report.read_text())["install"]}
  core = pins("requirements.txt")
  for name, version in core.items():  # the GPU file moves no pin of the core
    assert installed.get(name) == version, (name, installed.get(name), version)
  for name in ("jaxlib", "jax-cuda12-plugin", "jax-cuda12-pjrt"):
    assert installed.get(name) == core["jax"], (name, installed.get(name))
  for lib in ("nvidia-cublas-cu12", "nvidia-cudnn-cu12", "nvidia-nccl-cu12",
              "nvidia-cuda-nvcc-cu12"):
    assert lib in installed, f"{lib} missing: the CUDA libraries must come as wheels"
