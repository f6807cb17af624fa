"""mim_jax: masked image modeling with semantic teachers, in JAX/Flax."""
from mim_jax import console as _console

_console.set_env_defaults()  # before any module of the package imports TensorFlow
