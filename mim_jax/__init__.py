"""mim_jax: masked image modeling with semantic teachers, in JAX/Flax."""
from mim_jax import console as _console
from mim_jax import xla_flags as _xla_flags

_console.set_env_defaults()  # before any module of the package imports TensorFlow
_xla_flags.set_gpu_flags()  # before JAX creates a backend (it reads XLA_FLAGS once, then)
