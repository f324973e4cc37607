"""`python -m var_jax.sweep`: runs the command `var_jax.cli.sweep` (its docstring says what it does)."""
from var_jax.cli.sweep import run

if __name__ == '__main__':
  run()
