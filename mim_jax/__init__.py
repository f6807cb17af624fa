"""mim_jax: masked image modeling with semantic teachers, in JAX/Flax."""
