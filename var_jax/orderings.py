"""`python -m var_jax.orderings`: runs the command `var_jax.cli.orderings` (its docstring says what it does)."""
from var_jax.cli.orderings import run

if __name__ == '__main__':
  run()
