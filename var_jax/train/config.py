"""Training configuration: every key with its default, and validation/resolution before any XLA work.

Experiments start from `base_config()` and override what they need; `resolve(config, ...)` rejects
unknown keys and inconsistent settings with one-line errors and fills derived values (model width
from depth, warmup length, peak learning rate).
"""
from __future__ import annotations

from typing import Any

import ml_collections
from ml_collections import config_dict

SCHEDULES = ('lin0', 'lin', 'lin00', 'cos')
SYNTHETIC_TOKENS = 'synthetic_tokens'  # in-memory random tokens (var_jax.train.synthetic)


def _placeholder(kind):
  # A None default that can still be overridden from the command line with a typed value.
  return config_dict.placeholder(kind)


def data_config(with_datasets: bool = True) -> ml_collections.ConfigDict:
  """`data.*` keys: those of `var_jax.data.make_loader`, or only `name` for in-memory tokens.

  `with_datasets=False` avoids importing the dataset stack (TFDS, grain), for the benchmark.
  """
  if not with_datasets:
    return ml_collections.ConfigDict({'name': SYNTHETIC_TOKENS})
  from var_jax import data  # pylint: disable=g-import-not-at-top
  return data.default_config()


def base_config(with_datasets: bool = True) -> ml_collections.ConfigDict:
  """All training keys with defaults (official VAR recipe where one exists)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.steps = 1000
  c.batch_size = 256  # global

  # VAR attributes (var_jax.models.var.VAR); None width/heads/drop-path follow model.depth.
  c.model = ml_collections.ConfigDict(dict(
      vocab_size=4096, cvae=32, patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16), num_classes=1000,
      depth=16, embed_dim=_placeholder(int), num_heads=_placeholder(int), mlp_ratio=4.0,
      norm_eps=1e-6, shared_aln=False, attn_l2_norm=True, cond_drop_rate=0.1,
      drop_path_rate=_placeholder(float), dtype='float32', scan_layers=True, remat_policy='none',
      attention='xla'))

  # VQVAE attributes plus where its weights come from (path None: random init from `seed`).
  c.tokenizer = ml_collections.ConfigDict(dict(
      vocab_size=4096, z_channels=32, ch=160, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
      norm_groups=32, dropout=0.0, beta=0.25, using_znorm=False, quant_resi=0.5,
      share_quant_resi=4, patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
      path=_placeholder(str), seed=0))

  c.optim = ml_collections.ConfigDict(dict(
      base_lr=1e-4,              # peak lr = base_lr * batch_size / 256 ...
      lr=_placeholder(float),    # ... unless the peak is given here
      b1=0.9, b2=0.95, eps=1e-8,
      weight_decay=0.05,
      weight_decay_end=_placeholder(float),  # cosine ramp to this value; None keeps it constant
      schedule='lin0',           # one of SCHEDULES
      warmup_steps=_placeholder(int),  # None: 2% of steps (official wp = ep/50)
      warmup_start=0.005,        # lr at step 0 as a fraction of the peak (official wp0)
      final_lr_frac=0.01,        # lr at the last step as a fraction of the peak (official wpe)
      grad_clip=2.0,             # <= 0 disables clipping
      label_smoothing=0.0))

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.sharding = ml_collections.ConfigDict(dict(
      rules=_placeholder(tuple),   # None: var_jax.sharding.DEFAULT_RULES
      fsdp_min_size=2**16))        # parameters this large must be sharded when mesh.fsdp > 1

  c.checkpoint = ml_collections.ConfigDict(dict(
      every_steps=1000, keep=3,
      keep_every=_placeholder(int),  # also keep every K-th step permanently
      async_save=True))
  c.log = ml_collections.ConfigDict(dict(
      every_steps=50,
      peak_tflops=_placeholder(float)))  # per-device peak for MFU; None: known accelerator table
  c.eval = ml_collections.ConfigDict(dict(
      every_steps=1000, batches=10,
      batch_size=_placeholder(int)))  # None: same as batch_size

  c.data = data_config(with_datasets)
  return c


def _unknown_keys(cfg: Any, base: Any, prefix: str = '') -> list[str]:
  unknown = []
  for key in cfg.keys():
    name = f'{prefix}{key}'
    if key not in base:
      unknown.append(name)
    elif isinstance(base[key], ml_collections.ConfigDict):
      if not isinstance(cfg[key], (ml_collections.ConfigDict, dict)):
        raise ValueError(f'config: {name} must be a group of keys, got {cfg[key]!r}')
      unknown += _unknown_keys(cfg[key], base[key], name + '.')
  return unknown


def check_keys(config: Any) -> None:
  """Rejects any key that `base_config` does not define (typos would otherwise be ignored)."""
  with_datasets = config.get('data', {}).get('name') != SYNTHETIC_TOKENS
  unknown = _unknown_keys(config, base_config(with_datasets))
  if unknown:
    raise ValueError(f'config: unknown key {unknown[0]!r}'
                     + (f' (and {len(unknown) - 1} more)' if len(unknown) > 1 else '')
                     + '; see var_jax/train/config.py base_config() for the known keys')


def _merged(config: Any) -> ml_collections.ConfigDict:
  out = base_config(config.get('data', {}).get('name') != SYNTHETIC_TOKENS)
  out.update(ml_collections.ConfigDict(config).to_dict())
  return ml_collections.ConfigDict(out.to_dict())


def resolve_model(model_cfg: Any) -> dict:
  """Resolved VAR kwargs: depth rule applied, width/heads and other attributes checked."""
  from var_jax.models import var  # pylint: disable=g-import-not-at-top
  model = dict(var.resolve(dict(model_cfg)))
  model['patch_nums'] = tuple(model['patch_nums'])
  return model


def tokenizer_image_size(tok_cfg: Any) -> int:
  """Image side the tokenizer maps onto the last scale: pn_last * 2^(downsamplings)."""
  return tok_cfg.patch_nums[-1] * 2 ** (len(tok_cfg.ch_mult) - 1)


def resolve(config: Any, num_devices: int, process_count: int = 1) -> ml_collections.ConfigDict:
  """Validated copy of `config` with derived values filled in.

  Raises ValueError (one line, naming the key) for unknown keys, a mesh that does not match
  `num_devices`, a batch that does not split over the data-parallel devices or processes, a width
  not divisible by the heads, and tokenizer/model mismatches.
  """
  from var_jax import sharding  # pylint: disable=g-import-not-at-top
  check_keys(config)
  c = _merged(config)
  if c.steps <= 0:
    raise ValueError(f'config: steps must be positive, got {c.steps}')
  mesh_shape = sharding.resolve_mesh_shape([c.mesh[a] for a in sharding.MESH_AXES], num_devices)
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh_shape
  dp = c.mesh.data * c.mesh.fsdp
  if c.eval.batch_size is None:
    c.eval.batch_size = c.batch_size
  for key, batch in (('batch_size', c.batch_size), ('eval.batch_size', c.eval.batch_size)):
    if batch <= 0 or batch % dp:
      raise ValueError(f'config: {key}={batch} is not divisible by the data-parallel size '
                       f'{dp} (mesh.data={c.mesh.data} x mesh.fsdp={c.mesh.fsdp})')
    if batch % process_count:
      raise ValueError(f'config: {key}={batch} is not divisible by the {process_count} processes')
  sharding.rules_from_config(c.sharding.rules)

  model = resolve_model(c.model)
  c.model.update(model)
  tok = c.tokenizer
  # With tokenizer.path the loaded tokenizer's own config counts (the engine checks it).
  if not tok.path and tuple(tok.patch_nums) != model['patch_nums']:
    raise ValueError(f'config: tokenizer.patch_nums={tuple(tok.patch_nums)} differs from '
                     f'model.patch_nums={model["patch_nums"]}')
  if not tok.path and (tok.vocab_size, tok.z_channels) != (model['vocab_size'], model['cvae']):
    raise ValueError(f'config: tokenizer (vocab_size={tok.vocab_size}, z_channels={tok.z_channels}) '
                     f'does not match model (vocab_size={model["vocab_size"]}, cvae={model["cvae"]})')
  if c.data.name == 'tokens' and not c.tokenizer.path:
    raise ValueError('config: data.name="tokens" needs tokenizer.path (the tokenizer that made them)')
  if c.data.name not in ('tokens', SYNTHETIC_TOKENS) and c.tokenizer.path is None:
    expected = tokenizer_image_size(tok)
    if c.data.image_size != expected:
      raise ValueError(f'config: data.image_size={c.data.image_size} but the tokenizer maps '
                       f'{expected}px images to the last scale {model["patch_nums"][-1]}')

  o = c.optim
  if o.schedule not in SCHEDULES:
    raise ValueError(f'config: optim.schedule={o.schedule!r}; expected one of {SCHEDULES}')
  if o.lr is None:
    o.lr = o.base_lr * c.batch_size / 256
  if o.warmup_steps is None:
    o.warmup_steps = round(c.steps / 50)
  if o.weight_decay_end is None:
    o.weight_decay_end = o.weight_decay
  if not 0 <= o.warmup_steps < c.steps:
    raise ValueError(f'config: optim.warmup_steps={o.warmup_steps} must be in [0, steps={c.steps})')
  for key in ('every_steps',):
    for group in ('checkpoint', 'log', 'eval'):
      if c[group][key] <= 0:
        raise ValueError(f'config: {group}.{key} must be positive, got {c[group][key]}')
  if c.checkpoint.keep <= 0:
    raise ValueError(f'config: checkpoint.keep must be positive, got {c.checkpoint.keep}')
  return c
