"""`python -m var_jax.sample`: runs the command `var_jax.cli.sample` (its docstring says what it does)."""
from var_jax.cli.sample import run

if __name__ == '__main__':
  run()
