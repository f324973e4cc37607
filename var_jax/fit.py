"""`python -m var_jax.fit`: runs the command `var_jax.cli.fit` (its docstring says what it does)."""
from var_jax.cli.fit import run

if __name__ == '__main__':
  run()
