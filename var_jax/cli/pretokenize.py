"""Pre-tokenize a dataset split with a frozen tokenizer, for training on stored tokens.

  python -m var_jax.tokenize --config=experiments/FILE.py[:ARG] --out=DIR [--split=train] [--num_crops=1]
      [--flip] [--config.data.KEY=VALUE]

The images are those the config's `data` section names; the tokenizer is `config.tokenizer` (weights from
`tokenizer.path`, or a random init from `tokenizer.seed`, exactly as the training engine builds it). Run it on
every process of a job (or with --process_index/--process_count by hand) to split the work; run it again
with the same --out to resume. Train on the result with `data.name='tokens'`, `data.path=DIR`.
"""
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from var_jax import cli
from var_jax import errors
from var_jax.data import config as data_config
from var_jax.data import sources
from var_jax.data import tokens
from var_jax.weights import state_dict as sd
from var_jax.weights import vqvae

PROG = 'var-tokenize'


def _define_flags() -> None:
  config_flags.DEFINE_config_file('config', None, 'Experiment config (its data and tokenizer).')
  flags.DEFINE_string('out', None, 'Folder of the token dataset (created; resumed if present).')
  flags.DEFINE_string('split', None, 'Split to tokenize; default config.data.train_split.')
  flags.DEFINE_integer('num_crops', 1, 'Crops per image: the centre crop, then random crops.')
  flags.DEFINE_bool('flip', False, 'Also store every crop mirrored.')
  flags.DEFINE_integer('batch_size', 64, 'Images per tokenizer call.')
  flags.DEFINE_integer('chunk_size', 1024, 'Source images per file (the unit of resuming).')
  flags.DEFINE_integer('seed', 0, 'Seed of the random crops.')
  flags.DEFINE_integer('process_index', None, 'This process; default jax.process_index().')
  flags.DEFINE_integer('process_count', None, 'Processes; default jax.process_count().')


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
  data_cfg = config.data
  if data_config.option(data_cfg, 'name') in data_config.TOKEN_SOURCES:
    raise errors.ConfigError('data.name: tokenize needs an image dataset, not tokens')
  split = split or data_config.option(data_cfg, 'train_split')
  image_size = int(data_config.option(data_cfg, 'image_size'))
  module, params = vqvae.from_config(config.tokenizer)
  if module.image_size != image_size:
    raise errors.ConfigError(f'data.image_size={image_size} but the tokenizer encodes {module.image_size}px images')
  src = sources.open_source(data_cfg, split)
  return tokens.write_split(
      out, split, src.records, encode_fn=make_encode_fn(module, params),
      fingerprint=sd.fingerprint(params), patch_nums=tuple(module.patch_nums),
      vocab_size=module.vocab_size, image_size=image_size, num_classes=src.num_classes,
      source=f'{data_config.option(data_cfg, "name")}:{src.where}', image_key=src.image_key,
      label_key=src.label_key, num_crops=num_crops, flip=flip, seed=seed,
      mid_ratio=float(data_config.option(data_cfg, 'mid_ratio')), min_side=int(data_config.option(data_cfg, 'min_side')),
      batch_size=batch_size, chunk_size=chunk_size,
      process_index=jax.process_index() if process_index is None else process_index,
      process_count=jax.process_count() if process_count is None else process_count, progress=progress)


def main(argv):
  cli.no_positional(argv)
  f = flags.FLAGS
  if f.config is None or not f.out:
    raise errors.ConfigError('--config and --out are required')
  counts = tokenize(f.config, f.out, split=f.split, num_crops=f.num_crops, flip=f.flip, batch_size=f.batch_size,
                    chunk_size=f.chunk_size, seed=f.seed, process_index=f.process_index,
                    process_count=f.process_count)
  logging.info('tokenize: %s', counts)
  print(f'tokenize: {counts}')


def run():
  _define_flags()
  cli.run(main, prog=PROG)

