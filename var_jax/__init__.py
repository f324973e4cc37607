"""var_jax: VAR (Visual AutoRegressive modeling) in JAX/Flax, for scaling-law research."""

__version__ = "0.1.0"
