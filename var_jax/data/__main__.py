"""Prepare the dataset an experiment names, once, before training or tokenizing.

  python -m var_jax.data --config=experiments/FILE.py[:ARG] [--config.data.KEY=VALUE ...]

Builds `synthetic_shapes` or an `image_folder`, or prepares a TFDS dataset (ImageNet from data.manual_dir),
as ArrayRecord under data.data_dir. On a cluster, run it once before launching so that the processes of a
job do not all build the same files.
"""
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from var_jax.data import sources

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config whose `data` section to prepare.', allow_override=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  try:
    builder = sources.prepare(_CONFIG.value.data)
  except ValueError as e:  # Our one-line errors (missing manual dir, unknown name, ...) need no traceback.
    sys.exit(f'var_jax.data: error: {e}')
  for name, split in builder.info.splits.items():
    logging.info('%s: split %s has %d examples', builder.data_dir, name, split.num_examples)
  print(builder.data_dir)


def run():
  flags.mark_flags_as_required(['config'])
  app.run(main)


if __name__ == '__main__':
  run()
