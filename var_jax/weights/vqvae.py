"""The tokenizer's weights: its official key map, tokenizer folders, and a tokenizer from a config.

On disk a tokenizer is a folder with `config.json` (VQVAE attributes) and `vae_state.npz` (official key names),
or a bare official `.pth` / `.npz` state dict (the released configuration). `from_config` builds the
tokenizer a training config describes, from `tokenizer.path` or randomly initialised from `tokenizer.seed`:
training, pre-tokenization, sampling and the tests all build it through it.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_dict
import numpy as np

from var_jax import errors
from var_jax.models import quantizer
from var_jax.models import tokenizer
from var_jax.weights import state_dict as sd

CONFIG_JSON = 'config.json'
STATE_FILES = ('vae_state.npz', 'vae.pth')
SOURCE_KEYS = ('path', 'seed')  # where a config's tokenizer weights come from; the rest are attributes
FIELDS = tuple(f.name for f in dataclasses.fields(tokenizer.VQVAE) if f.name not in ('parent', 'name'))


def keymap(vae: tokenizer.VQVAE) -> sd.KeyMap:
  """KeyMap of the tokenizer; the phi container's name depends on the sharing mode."""
  phi_container = {0: 'quant_resi.', 1: 'quant_resi.qresi'}.get(vae.share_quant_resi, 'quant_resi.qresi_ls.')
  # Fully shared: one phi, no index in the official name.
  phi_rule = (r'quantize/phis_(\d+)', 'quantize/' + phi_container + ('' if vae.share_quant_resi == 1 else r'\1'))
  num_scales = len(vae.patch_nums)
  return sd.KeyMap(
      rules=(
          (r'(down|up)_(\d+)_(block|attn)_(\d+)', r'\1.\2.\3.\4'),
          (r'(down|up)_(\d+)_(downsample|upsample)', r'\1.\2.\3'),
          phi_rule,
      ),
      buffers={'quantize.ema_vocab_hit_SV': lambda: np.zeros((num_scales, vae.vocab_size), np.float32)})


def _dummy_image(vae: tokenizer.VQVAE) -> jax.Array:
  return jnp.zeros((1, vae.image_size, vae.image_size, 3), jnp.float32)


def param_shapes(vae: tokenizer.VQVAE) -> sd.Params:
  """The tokenizer's params tree as ShapeDtypeStructs (nothing is computed)."""
  img = jax.ShapeDtypeStruct((1, vae.image_size, vae.image_size, 3), jnp.float32)
  return jax.eval_shape(vae.init, jax.random.key(0), img)['params']


def from_state_dict(state_dict: Mapping[str, Any], vae: tokenizer.VQVAE,
                    what: str = 'tokenizer state dict') -> tuple[sd.Params, sd.StateDict]:
  """Official VQVAE state dict -> (params, buffers)."""
  return sd.state_dict_to_params(state_dict, param_shapes(vae), keymap(vae), what)


def to_state_dict(params: sd.Params, vae: tokenizer.VQVAE,
                  buffers: Mapping[str, np.ndarray] | None = None) -> sd.StateDict:
  """Tokenizer params -> official VQVAE state dict."""
  return sd.params_to_state_dict(params, keymap(vae), buffers)


def config_group() -> ml_collections.ConfigDict:
  """A config's `tokenizer.*` group: VQVAE attributes plus where its weights come from (`SOURCE_KEYS`: path None
  is a random init from seed); `from_config` builds it."""
  return ml_collections.ConfigDict(dict(
      vocab_size=4096, z_channels=32, ch=160, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, norm_groups=32,
      dropout=0.0, beta=0.25, using_znorm=False, quant_resi=0.5, share_quant_resi=4,
      patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16), path=config_dict.placeholder(str), seed=0))


def attributes(overrides: Mapping[str, Any] | None = None, what: str = 'tokenizer config') -> dict[str, Any]:
  """VQVAE attributes: the defaults updated with `overrides`; an unknown name is an error."""
  defaults = {f.name: f.default for f in dataclasses.fields(tokenizer.VQVAE) if f.name in FIELDS}
  unknown = sorted(set(overrides or {}) - set(FIELDS))
  if unknown:
    raise errors.ConfigError(f'{what}: unknown VQVAE attributes {unknown}; known: {sorted(FIELDS)}')
  cfg = {**defaults, **(overrides or {})}
  for key in ('ch_mult', 'patch_nums'):
    cfg[key] = tuple(cfg[key])
  try:
    quantizer.check_patch_nums(cfg['patch_nums'])
  except errors.ConfigError as e:
    raise errors.ConfigError(f'{what}: {e}') from None
  return cfg


def module_attributes(vae: tokenizer.VQVAE) -> dict[str, Any]:
  return {name: getattr(vae, name) for name in FIELDS}


def read_attributes(path: str) -> dict[str, Any]:
  """VQVAE attributes of a tokenizer folder (its config.json), or the released ones for a bare file."""
  if not os.path.exists(path):
    raise errors.WeightsError(f'{path}: no such tokenizer folder or state-dict file')
  if not os.path.isdir(path):
    return attributes()
  config_path = os.path.join(path, CONFIG_JSON)
  if not os.path.exists(config_path):
    raise errors.WeightsError(f'{path}: tokenizer folder has no {CONFIG_JSON}')
  try:
    with open(config_path) as f:
      overrides = json.load(f)
  except ValueError as e:
    raise errors.WeightsError(f'{config_path}: not JSON ({e})') from None
  return attributes(overrides, what=config_path)


def read(path: str) -> tuple[dict[str, Any], sd.StateDict]:
  """(VQVAE attributes, official state dict) from a tokenizer folder or a bare state-dict file."""
  cfg = read_attributes(path)
  if not os.path.isdir(path):
    return cfg, sd.read_state_dict(path)
  for name in STATE_FILES:
    if os.path.exists(os.path.join(path, name)):
      return cfg, sd.read_state_dict(os.path.join(path, name))
  raise errors.WeightsError(f'{path}: tokenizer folder has none of {list(STATE_FILES)}')


def load(path: str) -> tuple[tokenizer.VQVAE, sd.Params]:
  """(VQVAE module, params) from a tokenizer folder or a bare official state dict."""
  cfg, state_dict = read(path)
  vae = tokenizer.VQVAE(**cfg)
  params, _ = from_state_dict(state_dict, vae, what=path)
  return vae, params


def save(path: str, vae: tokenizer.VQVAE, params: sd.Params,
         buffers: Mapping[str, np.ndarray] | None = None) -> None:
  """Writes a tokenizer folder (config.json + vae_state.npz), or a bare .pth/.npz."""
  state_dict = to_state_dict(params, vae, buffers)
  if path.endswith(('.pth', '.npz')):
    sd.write_state_dict(path, state_dict)
    return
  os.makedirs(path, exist_ok=True)
  cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in module_attributes(vae).items()}
  with open(os.path.join(path, CONFIG_JSON), 'w') as f:
    json.dump(cfg, f, indent=1)
  sd.write_state_dict(os.path.join(path, 'vae_state.npz'), state_dict)


def convert(src: str, dst: str, overrides: Mapping[str, Any] | None = None) -> str:
  """Converts the tokenizer at `src` to `dst` through Flax params (so keys and shapes are checked).

  `overrides` (VQVAE attributes) describe a bare state dict that is not the released configuration.
  Returns the params fingerprint.
  """
  cfg, state_dict = read(src)
  if overrides is not None:
    if os.path.isdir(src):
      raise errors.ConfigError(f'tokenizer attributes are for bare state dicts; {src} has {CONFIG_JSON}')
    cfg = attributes(overrides, what='tokenizer attributes')
  vae = tokenizer.VQVAE(**cfg)
  params, buffers = from_state_dict(state_dict, vae, what=src)
  save(dst, vae, params, buffers)
  return sd.fingerprint(params)


@functools.lru_cache(maxsize=4)
def random_params(vae: tokenizer.VQVAE, seed: int) -> sd.Params:
  """Randomly initialised params as host arrays, computed once per process.

  Compiling the VQVAE init is slow on CPU (it is all convolution initialisers); engines for several meshes in
  one process (tests, benchmarks) share the result.
  """
  init = jax.jit(lambda key: vae.init({'params': key}, _dummy_image(vae))['params'])
  return jax.device_get(init(jax.random.key(seed)))


def from_config(tok_cfg: Any) -> tuple[tokenizer.VQVAE, sd.Params]:
  """(VQVAE, host params) a config's `tokenizer` group describes: loaded from `path`, else from `seed`."""
  if tok_cfg.get('path'):
    return load(str(tok_cfg.path))
  vae = tokenizer.VQVAE(**attributes({k: v for k, v in tok_cfg.items() if k not in SOURCE_KEYS}))
  return vae, random_params(vae, int(tok_cfg.get('seed') or 0))
