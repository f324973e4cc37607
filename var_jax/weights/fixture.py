"""Parity fixture folders made by the official code: their config, models, weights and expected arrays.

A folder holds `config.json` (the official constructor arguments: `V`, `Cvae`, `ch`, `share_quant_resi`,
`patch_nums`, `image_size`, `num_classes`, `depth`, `width`, `heads`, `shared_aln`, `attn_l2_norm`, optional
`mlp_ratio`, and the `edit` and `train` blocks), the official state dicts (`vae_state.npz` or `vae.pth`,
`var_state.npz` or `var.pth`) and `expected.npz`. The parity tool and the tests read fixtures through here.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

from var_jax import errors
from var_jax.models import tokenizer
from var_jax.models import var as var_lib
from var_jax.weights import state_dict as sd
from var_jax.weights import var as var_weights
from var_jax.weights import vqvae


class MissingPart(errors.ConfigError):
  """The fixture folder lacks a part (a model's weights, a block of keys); the rest is still checked."""


def vae_attributes(config: dict[str, Any], what: str = 'fixture config') -> dict[str, Any]:
  """VQVAE attributes of a fixture's config.json (the official fixed layout for everything else)."""
  return vqvae.attributes(dict(vocab_size=config['V'], z_channels=config['Cvae'], ch=config['ch'],
                               share_quant_resi=config['share_quant_resi'],
                               patch_nums=tuple(config['patch_nums'])), what=what)


def var_attributes(config: dict[str, Any]) -> dict[str, Any]:
  """Resolved VAR attributes of a fixture's config.json (no dropout or drop-path, as the fixtures)."""
  return var_lib.resolve(dict(
      vocab_size=config['V'], cvae=config['Cvae'], patch_nums=tuple(config['patch_nums']),
      num_classes=config['num_classes'], depth=config['depth'], embed_dim=config['width'],
      num_heads=config['heads'], mlp_ratio=config.get('mlp_ratio', 4.0), shared_aln=config['shared_aln'],
      attn_l2_norm=config['attn_l2_norm'], drop_path_rate=0.0))


@dataclasses.dataclass
class Fixture:
  """One fixture folder, read once; models and converted weights are loaded on first use."""
  path: str
  config: dict[str, Any]
  expected: dict[str, np.ndarray]
  _cache: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

  @classmethod
  def load(cls, path: str) -> Fixture:
    for name in ('config.json', 'expected.npz'):
      if not os.path.exists(os.path.join(path, name)):
        raise errors.ConfigError(f'{path}: not a parity fixture folder (no {name})')
    with open(os.path.join(path, 'config.json')) as f:
      config = json.load(f)
    with np.load(os.path.join(path, 'expected.npz')) as data:
      expected = {k: data[k] for k in data.files}
    return cls(str(path), config, expected)

  def state_dict_path(self, stem: str) -> str:
    """The file of the official state dict `<stem>_state.npz` (preferred) or `<stem>.pth`."""
    for name in (f'{stem}_state.npz', f'{stem}.pth'):
      if os.path.exists(os.path.join(self.path, name)):
        return os.path.join(self.path, name)
    raise MissingPart(f'no {stem}_state.npz or {stem}.pth in {self.path}')

  def state_dict(self, stem: str) -> sd.StateDict:
    """The official state dict `<stem>_state.npz` (preferred) or `<stem>.pth`."""
    return sd.read_state_dict(self.state_dict_path(stem))

  def tokenizer(self) -> tuple[tokenizer.VQVAE, sd.Params]:
    """The fixture's VQVAE and its converted params."""
    if 'tokenizer' not in self._cache:
      what = f'{self.path}/config.json'
      vae = tokenizer.VQVAE(**vae_attributes(self.config, what))
      if self.config.get('image_size', vae.image_size) != vae.image_size:
        raise errors.ConfigError(f'{what}: image_size {self.config["image_size"]} does not match patch_nums '
                                 f'and ch_mult ({vae.image_size})')
      params, _ = vqvae.from_state_dict(self.state_dict('vae'), vae, what=f'{self.path} vae weights')
      self._cache['tokenizer'] = vae, params
    return self._cache['tokenizer']

  def var(self, **overrides: Any) -> tuple[var_lib.VAR, sd.Params]:
    """The fixture's VAR (attributes from config.json, plus `overrides`) and its converted params."""
    key = f'var{sorted(overrides.items())}'
    if key not in self._cache:
      model = var_lib.VAR(**{**var_attributes(self.config), **overrides})
      params = var_weights.from_state_dict(self.state_dict('var'), model, what=f'{self.path} var weights')
      self._cache[key] = model, params
    return self._cache[key]
