"""`python -m var_jax.convert`: runs the command `var_jax.cli.convert` (its docstring says what it does)."""
from var_jax.cli.convert import run

if __name__ == '__main__':
  run()
