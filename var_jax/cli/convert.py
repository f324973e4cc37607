"""`python -m var_jax.convert`: official VAR weights to var_jax's and back.

  python -m var_jax.convert --src vae_ch160v4096z32.pth --dst tokenizer_dir     # -> config.json + vae_state.npz
  python -m var_jax.convert --src tokenizer_dir --dst vae.pth                   # bit for bit the official file
  python -m var_jax.convert --model=var --src var_d16.pth --dst var_d16.npz

Every conversion goes through Flax params, so keys and shapes are checked; the library is `var_jax.weights`.
"""
from __future__ import annotations

import json

from absl import flags

from var_jax import cli
from var_jax import errors
from var_jax.weights import var as var_weights
from var_jax.weights import vqvae

PROG = 'var-convert'


def _define_flags() -> None:
  flags.DEFINE_string('src', None, 'tokenizer folder, or official .pth/.npz state dict.')
  flags.DEFINE_string('dst', None, 'output: a folder (config.json + vae_state.npz) or a .pth/.npz state dict.')
  flags.DEFINE_enum('model', 'tokenizer', ['tokenizer', 'var'],
                    'What --src holds: a tokenizer, or a VAR transformer state dict (--dst then is a .pth/.npz).')
  flags.DEFINE_string('tokenizer_config', None, 'JSON of VQVAE attributes for a bare .pth/.npz --src '
                      '(default: the released configuration).')
  flags.DEFINE_string('var_config', None, 'JSON of VAR attributes the state dict does not record '
                      '(num_heads without attn_l2_norm).')


def _json(flag: str) -> dict | None:
  value = getattr(flags.FLAGS, flag)
  if value is None:
    return None
  try:
    return json.loads(value)
  except ValueError as e:
    raise errors.ConfigError(f'--{flag}: not JSON ({e})') from None


def main(argv) -> None:
  cli.no_positional(argv)
  f = flags.FLAGS
  if not f.src or not f.dst:
    raise errors.ConfigError('--src and --dst are required')
  if f.model == 'var':
    digest = var_weights.convert(f.src, f.dst, _json('var_config'))
  else:
    digest = vqvae.convert(f.src, f.dst, _json('tokenizer_config'))
  print(f'{f.src} -> {f.dst} (fingerprint {digest})')


def run() -> None:
  _define_flags()
  cli.run(main, prog=PROG)

