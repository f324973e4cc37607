"""Pre-tokenized datasets: written by `var_jax.tokenize`, read by the loader as `data.name = 'tokens'`."""


def open_split(path, split, *, tokenizer_fingerprint=None):
  """Not written yet: the token dataset reader lands with the tokenize CLI."""
  raise NotImplementedError(f'token datasets are not readable yet ({path}, {split}, {tokenizer_fingerprint})')
