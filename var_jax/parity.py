"""`python -m var_jax.parity`: runs the command `var_jax.cli.parity` (its docstring says what it does)."""
from var_jax.cli.parity import run

if __name__ == '__main__':
  run()
