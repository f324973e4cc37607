"""Class-conditional samples from a VAR: a PNG grid (one row per class) and the tokens as .npz.

Usage:
  # a converted official checkpoint (.pth or .npz state dict) and its tokenizer
  python -m var_jax.sample --var=var_d16.pth --tokenizer=vae_ch160v4096z32.pth --out_dir=samples
  # a training workdir (config.json + checkpoints/); the tokenizer comes from its config
  python -m var_jax.sample --workdir=runs/d4 --classes=0,1,2 --samples_per_class=8 --out_dir=samples

Defaults are the official evaluation setting (cfg 1.5, top-k 900, top-p 0.96); top-k is capped at
the vocabulary size. Writes `<out_dir>/samples.png` and `<out_dir>/tokens.npz` (labels, idx_<k>).
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterator, Sequence

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

_VAR = flags.DEFINE_string('var', None, 'Official VAR state dict (.pth or .npz).')
_VAR_CONFIG = flags.DEFINE_string('model_config', None, 'JSON of VAR attributes overriding what the '
                                  'state dict implies (e.g. num_heads when attn_l2_norm is off).')
_TOKENIZER = flags.DEFINE_string('tokenizer', None, 'Tokenizer directory or official .pth/.npz; '
                                 'required with --var, overrides the workdir config otherwise.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir (config.json + checkpoints/).', allow_override=True)
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step of --workdir (default: the latest).')
_CLASSES = flags.DEFINE_list('classes', ['0', '1', '2', '3'], 'Class labels, one grid row each.')
_PER_CLASS = flags.DEFINE_integer('samples_per_class', 4, 'Samples per class (grid columns).')
_CFG = flags.DEFINE_float('cfg', 1.5, 'Classifier-free guidance at the last scale (>= 0).')
_TOP_K = flags.DEFINE_integer('top_k', 900, 'Top-k filtering (0 = off; capped at the vocabulary).')
_TOP_P = flags.DEFINE_float('top_p', 0.96, 'Top-p filtering (0 = off).')
_MORE_SMOOTH = flags.DEFINE_bool('more_smooth', False, 'Gumbel-softmax visualisation mode.')
_SEED = flags.DEFINE_integer('seed', 0, 'Sampling seed.', allow_override=True)
_BATCH = flags.DEFINE_integer('batch_size', 16, 'Images per compiled batch.', allow_override=True)
_OUT_DIR = flags.DEFINE_string('out_dir', 'samples', 'Output directory.')


def load_official(var_path: str, tokenizer_path: str, overrides: dict | None = None):
  """(VAR, params, VQVAE, params) from an official VAR state dict and a tokenizer path."""
  from var_jax import convert  # pylint: disable=g-import-not-at-top
  var_model, var_params = convert.load_var(var_path, overrides)
  vae_model, vae_params = convert.load_tokenizer(tokenizer_path)
  return var_model, var_params, vae_model, vae_params


def load_workdir(workdir: str, step: int | None = None, tokenizer_path: str | None = None):
  """(VAR, params, VQVAE, params) from a training workdir's config.json and orbax checkpoint."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from var_jax import convert  # pylint: disable=g-import-not-at-top
  from var_jax.models import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  from var_jax.models import var as var_lib  # pylint: disable=g-import-not-at-top
  from var_jax.train import config as config_lib  # pylint: disable=g-import-not-at-top
  from var_jax.train import engine as engine_lib  # pylint: disable=g-import-not-at-top

  config_path = os.path.join(workdir, 'config.json')
  if not os.path.exists(config_path):
    raise ValueError(f'{workdir}: not a training workdir (no config.json)')
  with open(config_path) as f:
    cfg = ml_collections.ConfigDict(json.load(f))
  var_model = var_lib.VAR(**var_lib.resolve(cfg.model))
  ckpt_dir = os.path.join(os.path.abspath(workdir), 'checkpoints')
  manager = ocp.CheckpointManager(ckpt_dir, item_names=('state', 'meta'),
                                  options=ocp.CheckpointManagerOptions(read_only=True))
  steps = sorted(manager.all_steps())
  if not steps:
    raise ValueError(f'{ckpt_dir}: no checkpoints')
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise ValueError(f'{ckpt_dir}: no step {step}; saved steps are {steps}')
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(fallback_sharding=device)))
  var_params = restored['state']['params']
  _check_params(var_model, var_params, f'{ckpt_dir}/{step}')

  tok_cfg = cfg.tokenizer
  if tokenizer_path or tok_cfg.get('path'):
    vae_model, vae_params = convert.load_tokenizer(tokenizer_path or tok_cfg.path)
  else:
    # Randomly initialised tokenizer, rebuilt exactly as the training engine does.
    vae_model = tokenizer_lib.VQVAE(**engine_lib.tokenizer_kwargs(tok_cfg))
    size = config_lib.tokenizer_image_size(tok_cfg)
    vae_params = jax.jit(vae_model.init)({'params': jax.random.key(tok_cfg.seed)},
                                         jnp.zeros((1, size, size, 3), jnp.float32))['params']
  logging.info('loaded %s step %d', workdir, step)
  return var_model, var_params, vae_model, vae_params


def _check_params(var_model, params, what: str) -> None:
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  L = var_model.seq_len - var_model.first_l
  want = nn.unbox(jax.eval_shape(var_model.init, jax.random.key(0), jnp.zeros((1,), jnp.int32),
                                 jnp.zeros((1, L, var_model.cvae)))['params'])
  shapes = lambda tree: jax.tree_util.tree_map_with_path(
      lambda p, x: (jax.tree_util.keystr(p), tuple(x.shape)), tree)
  if jax.tree.leaves(shapes(want)) != jax.tree.leaves(shapes(params)):
    raise ValueError(f'{what}: params do not match the config.json model')


def sample_batches(sampler, var_params, vae_params, labels: Sequence[int], *, batch_size: int,
                   seed: int, **knobs) -> Iterator[tuple[list[np.ndarray], np.ndarray]]:
  """Yields (idx list, images in [0, 1]) per batch of `labels`; the last batch is padded to
  `batch_size` (so nothing recompiles) and trimmed. Batch i uses fold_in(key(seed), i)."""
  labels = np.asarray(labels, np.int32)
  rng = jax.random.key(seed)
  for i, begin in enumerate(range(0, len(labels), batch_size)):
    chunk = labels[begin:begin + batch_size]
    padded = np.concatenate([chunk, np.full(batch_size - len(chunk), chunk[-1], np.int32)])
    idx, img = sampler(var_params, vae_params, padded, jax.random.fold_in(rng, i), **knobs)
    n = len(chunk)
    yield [np.asarray(x)[:n] for x in idx], np.asarray(img)[:n]


def image_grid(img_NHWC: np.ndarray, rows: int) -> np.ndarray:
  """(rows * cols, H, W, 3) in [0, 1] -> uint8 (rows * H, cols * W, 3)."""
  n, h, w, c = img_NHWC.shape
  cols = n // rows
  grid = img_NHWC.reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c)
  return np.round(np.clip(grid, 0, 1) * 255).astype(np.uint8)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if bool(_VAR.value) == bool(_WORKDIR.value):
    raise app.UsageError('give exactly one of --var (with --tokenizer) or --workdir')
  if _VAR.value and not _TOKENIZER.value:
    raise app.UsageError('--var needs --tokenizer')
  if _PER_CLASS.value <= 0 or _BATCH.value <= 0:
    raise app.UsageError('--samples_per_class and --batch_size must be positive')
  try:
    classes = [int(c) for c in _CLASSES.value]
  except ValueError:
    raise app.UsageError(f'--classes must be integers, got {_CLASSES.value}') from None
  if _CFG.value < 0:
    raise app.UsageError(f'--cfg must be >= 0, got {_CFG.value}')

  import PIL.Image  # pylint: disable=g-import-not-at-top
  import tqdm  # pylint: disable=g-import-not-at-top
  from var_jax.models import sampling  # pylint: disable=g-import-not-at-top
  from var_jax.models import var as var_lib  # pylint: disable=g-import-not-at-top

  if _VAR.value:
    overrides = json.loads(_VAR_CONFIG.value) if _VAR_CONFIG.value else None
    var_model, var_params, vae_model, vae_params = load_official(_VAR.value, _TOKENIZER.value,
                                                                 overrides)
  else:
    var_model, var_params, vae_model, vae_params = load_workdir(_WORKDIR.value, _STEP.value,
                                                                _TOKENIZER.value)
  try:
    var_lib.check_labels(np.asarray(classes), var_model.num_classes, allow_uncond=False)
  except ValueError as e:
    raise app.UsageError(f'--classes: {e}') from None

  sampler = sampling.make_sampler(var_model, vae_model)
  labels = np.repeat(np.asarray(classes, np.int32), _PER_CLASS.value)
  knobs = dict(cfg=_CFG.value, top_k=min(_TOP_K.value, var_model.vocab_size), top_p=_TOP_P.value,
               more_smooth=_MORE_SMOOTH.value)
  batches = sample_batches(sampler, var_params, vae_params, labels, batch_size=_BATCH.value,
                           seed=_SEED.value, **knobs)
  total = -(-len(labels) // _BATCH.value)
  idx_parts, img_parts = [], []
  for idx, img in tqdm.tqdm(batches, total=total, desc='sampling', unit='batch'):
    idx_parts.append(idx)
    img_parts.append(img)

  os.makedirs(_OUT_DIR.value, exist_ok=True)
  grid = image_grid(np.concatenate(img_parts), rows=len(classes))
  png = os.path.join(_OUT_DIR.value, 'samples.png')
  PIL.Image.fromarray(grid).save(png)
  tokens = {f'idx_{k}': np.concatenate([p[k] for p in idx_parts])
            for k in range(len(var_model.patch_nums))}
  npz = os.path.join(_OUT_DIR.value, 'tokens.npz')
  np.savez(npz, labels=labels, patch_nums=np.asarray(var_model.patch_nums), **tokens)
  print(f'wrote {png} ({len(classes)} rows x {_PER_CLASS.value}) and {npz}')


def run() -> None:
  app.run(main)


if __name__ == '__main__':
  run()
