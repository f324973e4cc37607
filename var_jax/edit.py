"""`python -m var_jax.edit`: runs the command `var_jax.cli.edit` (its docstring says what it does)."""
from var_jax.cli.edit import run

if __name__ == '__main__':
  run()
