"""The `data` config group: every key the loaders read, with its default. Imports no dataset library.

`data.name` picks the source: `synthetic_shapes` and `image_folder` (built by var_jax as TFDS ArrayRecord),
`tokens` (a pre-tokenized folder, `var_jax.tokenize`), `synthetic_tokens` (random tokens in memory, for
benchmarks and engine tests), or any TFDS dataset name (`imagenet2012`, `cifar10`, ...).
"""
from __future__ import annotations

import functools
import os
from typing import Any

import ml_collections
from ml_collections import config_dict

from var_jax import errors

SYNTHETIC_SHAPES, IMAGE_FOLDER, TOKENS, SYNTHETIC_TOKENS = (
    'synthetic_shapes', 'image_folder', 'tokens', 'synthetic_tokens')
TOKEN_SOURCES = (TOKENS, SYNTHETIC_TOKENS)  # sources whose records are tokens, not images
DEFAULT_DATA_DIR = '~/tensorflow_datasets'
MID_RATIO = 1.125  # train: shorter side resized to round(MID_RATIO * image_size), then a random crop
MIN_SIDE = 8  # images with a shorter side below this are skipped as 'tiny'
# synthetic_shapes sizes: a build of about a minute on one core.
SHAPES_NUM_TRAIN, SHAPES_NUM_EVAL, SHAPES_MAX_SHAPES = 20_000, 1_000, 3
SHAPES_RADIUS = (0.12, 0.4)  # range of shape radii, as fractions of the image side


def default_config() -> ml_collections.ConfigDict:
  """The `data` keys with their defaults (None ones typed, so command-line flags can set them)."""
  return ml_collections.ConfigDict({
      'name': SYNTHETIC_SHAPES,
      'data_dir': DEFAULT_DATA_DIR,  # where TFDS datasets (ours included) are built and read
      'path': config_dict.placeholder(str),  # image_folder: the folder of class folders; tokens: tokenize's --out
      'manual_dir': config_dict.placeholder(str),  # manual-download TFDS datasets (imagenet2012)
      'train_split': 'train',
      'eval_split': 'validation',  # cifar10 has 'test'
      'image_size': 64,
      'mid_ratio': MID_RATIO,
      'hflip': False,
      'min_side': MIN_SIDE,
      'num_threads': 8,  # reader threads per process (decode + preprocess run in them)
      'prefetch': 2,  # batches read ahead
      'worker_count': 0,  # grain worker processes (> 0 needs absl flags parsed and a __main__ guard)
      # synthetic_shapes only:
      'num_train': SHAPES_NUM_TRAIN,
      'num_eval': SHAPES_NUM_EVAL,
      'max_shapes': SHAPES_MAX_SHAPES,
      'synthetic_seed': 0,
      'synthetic_style': 'rich',  # rich | plain (flat shapes in palette colours on a flat background: the demo's)
      'synthetic_classes': '',  # comma-separated shape kinds to draw (labels index them); '' for all ten
      'synthetic_radius': SHAPES_RADIUS,  # (low, high)
  })


@functools.lru_cache(maxsize=1)
def _defaults() -> dict[str, Any]:
  return default_config().to_dict()


def option(data_cfg, key: str):
  """`data_cfg[key]`, or its default where the key is missing or None."""
  value = data_cfg.get(key) if hasattr(data_cfg, 'get') else getattr(data_cfg, key, None)
  return _defaults()[key] if value is None else value


def data_dir(data_cfg) -> str:
  return os.path.expanduser(str(option(data_cfg, 'data_dir')))


def check(data_cfg) -> None:
  """DataError for a dataset folder the config needs but names wrongly; reads no data (training checks it first)."""
  name, path = option(data_cfg, 'name'), option(data_cfg, 'path')
  what = {IMAGE_FOLDER: 'the folder holding one sub-folder of images per class',
          TOKENS: 'the directory written by var_jax.tokenize --out'}.get(name)
  if what is None:
    return
  if not path:
    raise errors.DataError(f'data.path: {name} needs {what}')
  if not os.path.isdir(os.path.expanduser(str(path))):
    raise errors.DataError(f'data.path: {str(path)!r} is not a directory; {name} needs {what}')
