"""`python -m var_jax.bench`: runs the command `var_jax.cli.bench` (its docstring says what it does)."""
from var_jax.cli.bench import run

if __name__ == '__main__':
  run()
