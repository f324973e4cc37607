"""`python -m var_jax.evaluate`: runs the command `var_jax.cli.evaluate` (its docstring says what it does)."""
from var_jax.cli.evaluate import run

if __name__ == '__main__':
  run()
