"""Prepare the dataset an experiment names, once, before training or tokenizing.

  python -m var_jax.data --config=experiments/FILE.py[:ARG] [--config.data.KEY=VALUE ...]

Builds `synthetic_shapes` or an `image_folder`, or prepares a TFDS dataset (ImageNet from data.manual_dir),
as ArrayRecord under data.data_dir. On a cluster, run it once before launching so that the processes of a
job do not all build the same files.
"""
from absl import logging
from ml_collections import config_flags

from var_jax import cli
from var_jax import errors
from var_jax.data import sources

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config whose `data` section to prepare.')


def main(argv):
  cli.no_positional(argv)
  if _CONFIG.value is None:
    raise errors.ConfigError('--config is required')
  builder = sources.prepare(_CONFIG.value.data)
  for name, split in builder.info.splits.items():
    logging.info('%s: split %s has %d examples', builder.data_dir, name, split.num_examples)
  print(builder.data_dir)


def run():
  cli.run(main, prog='var-data')


if __name__ == '__main__':
  run()
