"""Pre-tokenize a dataset split with a frozen tokenizer, for training on stored tokens.

  python -m var_jax.tokenize --config=experiments/FILE.py[:ARG] --out=DIR [--split=train] [--num_crops=1]
      [--flip] [--config.data.KEY=VALUE]

The images are those the config's `data` section names; the tokenizer is `config.tokenizer` (weights from
`tokenizer.path`, or a random init from `tokenizer.seed`, exactly as the training engine builds it). Run it on
every process of a job (or with --process_index/--process_count by hand) to split the work; run it again
with the same --out to resume. Train on the result with `data.name='tokens'`, `data.path=DIR`.
"""
import sys

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from var_jax.data import sources
from var_jax.data import tokens

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config (its data and tokenizer).', allow_override=True)
_OUT = flags.DEFINE_string('out', None, 'Directory of the token dataset (created; resumed if present).', allow_override=True)
_SPLIT = flags.DEFINE_string('split', None, 'Split to tokenize; default config.data.train_split.')
_NUM_CROPS = flags.DEFINE_integer('num_crops', 1, 'Crops per image: the centre crop, then random crops.')
_FLIP = flags.DEFINE_bool('flip', False, 'Also store every crop mirrored.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 64, 'Images per tokenizer call.', allow_override=True)
_CHUNK_SIZE = flags.DEFINE_integer('chunk_size', 1024, 'Source images per file (the unit of resuming).')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the random crops.', allow_override=True)
_PROCESS_INDEX = flags.DEFINE_integer('process_index', None, 'This process; default jax.process_index().')
_PROCESS_COUNT = flags.DEFINE_integer('process_count', None, 'Processes; default jax.process_count().')


def load_tokenizer(tok_cfg, image_size: int):
  """(VQVAE module, params) from `tokenizer.path`, or initialised from `tokenizer.seed` as the engine does."""
  if tok_cfg.get('path'):
    from var_jax import convert  # pylint: disable=g-import-not-at-top  # Heavy (torch-free) loader, only if used.
    return convert.load_tokenizer(tok_cfg.path)
  from var_jax.models import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  from var_jax.train import engine  # pylint: disable=g-import-not-at-top
  module = tokenizer_lib.VQVAE(**engine.tokenizer_kwargs(tok_cfg))
  dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  params = jax.jit(module.init)({'params': jax.random.key(tok_cfg.seed)}, dummy)['params']
  return module, params


def make_encode_fn(module, params):
  """float32 [B, R, R, 3] -> int32 [B, L]: the tokenizer's indices of every scale, concatenated."""
  @jax.jit
  def encode(img_BHWC):
    return jnp.concatenate(module.apply({'params': params}, img_BHWC, method=module.img_to_idx), axis=1)
  return lambda img_BHWC: np.asarray(encode(img_BHWC))


def tokenize(config, out: str, *, split: str | None = None, num_crops: int = 1, flip: bool = False,
             batch_size: int = 64, chunk_size: int = 1024, seed: int = 0, process_index: int | None = None,
             process_count: int | None = None, progress: bool = True) -> dict[str, int]:
  """Writes this process's share of `split` of `config.data` as tokens of `config.tokenizer` into `out`."""
  from var_jax import convert  # pylint: disable=g-import-not-at-top
  data_cfg = config.data
  if sources.option(data_cfg, 'name') == 'tokens':
    raise ValueError('data.name: tokenize needs an image dataset, not tokens')
  split = split or sources.option(data_cfg, 'train_split')
  image_size = int(sources.option(data_cfg, 'image_size'))
  module, params = load_tokenizer(config.tokenizer, image_size)
  src = sources.open_source(data_cfg, split)
  return tokens.write_split(
      out, split, src.records, encode_fn=make_encode_fn(module, params),
      fingerprint=convert.fingerprint(params), patch_nums=tuple(module.patch_nums),
      vocab_size=module.vocab_size, image_size=image_size, num_classes=src.num_classes,
      source=f'{sources.option(data_cfg, "name")}:{src.where}', image_key=src.image_key,
      label_key=src.label_key, num_crops=num_crops, flip=flip, seed=seed,
      mid_ratio=float(sources.option(data_cfg, 'mid_ratio')), min_side=int(sources.option(data_cfg, 'min_side')),
      batch_size=batch_size, chunk_size=chunk_size,
      process_index=jax.process_index() if process_index is None else process_index,
      process_count=jax.process_count() if process_count is None else process_count, progress=progress)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if _CONFIG.value is None or not _OUT.value:
    raise app.UsageError('--config and --out are required')
  try:
    counts = tokenize(_CONFIG.value, _OUT.value, split=_SPLIT.value, num_crops=_NUM_CROPS.value,
                      flip=_FLIP.value, batch_size=_BATCH_SIZE.value, chunk_size=_CHUNK_SIZE.value,
                      seed=_SEED.value, process_index=_PROCESS_INDEX.value,
                      process_count=_PROCESS_COUNT.value)
  except ValueError as e:  # Our one-line errors (bad path, split, tokenizer) need no traceback.
    sys.exit(f'var_jax.tokenize: error: {e}')
  logging.info('tokenize: %s', counts)
  print(f'tokenize: {counts}')


def run():
  app.run(main)


if __name__ == '__main__':
  run()
