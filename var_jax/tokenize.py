"""`python -m var_jax.tokenize`: runs the command `var_jax.cli.pretokenize` (its docstring says what it does)."""
from var_jax.cli.pretokenize import run

if __name__ == '__main__':
  run()
