"""Weights I/O, below the train layer: official state dicts, `.pth`/`.npz` files, tokenizer folders.

  state_dict  reading and writing `.pth`/`.npz`, `KeyMap` (Flax path <-> official key), fingerprints
  vqvae       the tokenizer's key map, tokenizer folders (load, save), a tokenizer from a config by path or seed
  var         the VAR transformer's official layout (both AdaLN variants, scanned or unrolled)
  fixture     official-code parity fixture folders: their config, models and weights
  classifier  classifier folders (config.json + params.npz) of the `shapes` feature extractor
"""
