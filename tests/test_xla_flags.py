"""The one place GPU XLA flags are set: merging into XLA_FLAGS, and every flag name known to the
pinned jaxlib (a misspelt flag aborts the process that reads it)."""
import os
import subprocess
import sys

from mim_jax import xla_flags


def test_merge_appends_and_the_environment_wins():
  flags = ["--xla_gpu_enable_triton_gemm=false", "--xla_gpu_enable_cublaslt=true"]
  assert xla_flags.merge("", flags) == " ".join(flags)
  merged = xla_flags.merge("--xla_force_host_platform_device_count=8 "
                           "--xla_gpu_enable_cublaslt=false", flags)
  assert merged == ("--xla_force_host_platform_device_count=8 --xla_gpu_enable_cublaslt=false "
                    "--xla_gpu_enable_triton_gemm=false")
  env = {"XLA_FLAGS": "--xla_gpu_enable_command_buffer="}
  xla_flags.set_gpu_flags(env, ["--xla_gpu_enable_command_buffer=FUSION"])
  assert env == {"XLA_FLAGS": "--xla_gpu_enable_command_buffer="}
  env = {}
  xla_flags.set_gpu_flags(env, ())  # nothing measured, nothing set: XLA_FLAGS stays unset
  assert env == {}


def test_every_flag_is_known_to_the_pinned_jaxlib():
  flags = list(xla_flags.GPU_FLAGS) + list(xla_flags.CANDIDATES.values())
  assert len({xla_flags.flag_name(f) for f in flags}) == len(flags)
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(flags))
  r = subprocess.run([sys.executable, "-c", "import jax; jax.numpy.zeros(1).block_until_ready()"],
                     env=env, capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]

