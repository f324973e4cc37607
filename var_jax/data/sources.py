"""Opening a dataset split as a random-access source of records, whatever `data.name` says.

Every image source is a TFDS dataset stored as ArrayRecord and read with `as_data_source` (no TensorFlow):
our `synthetic_shapes` and `image_folder` builders (built on first use), or any TFDS dataset by name
(prepared on first use; manual-download datasets such as imagenet2012 read `data.manual_dir`). Bad files are
dealt with when a dataset is built (see `image_folder`); records decode to uint8 arrays, which the loader
brings to RGB (`preprocess.as_rgb`) whatever their channels or bit depth. `data.name == 'tokens'` opens a
pre-tokenized dataset (see `tokens.py`).
"""
import dataclasses
import os
from typing import Any, Sequence

import tensorflow_datasets as tfds

from var_jax import errors
from var_jax.data import image_folder
from var_jax.data import synthetic_shapes
from var_jax.data import tokens as tokens_lib
from var_jax.data.config import data_dir
from var_jax.data.config import option

@dataclasses.dataclass(frozen=True)
class Source:
  """One split of a dataset.

  Attributes:
    records: random-access sequence of record dicts (`len`, `[i]`).
    kind: 'image' (records hold a decoded image under `image_key`) or 'tokens' (records hold 'tokens').
    num_classes: number of labels.
    where: the path it reads, for messages.
    image_key, label_key: record keys of the image and label.
  """
  records: Sequence[dict[str, Any]]
  kind: str
  num_classes: int
  where: str
  image_key: str = 'image'
  label_key: str = 'label'


def prepare(data_cfg) -> tfds.core.DatasetBuilder:
  """Returns the TFDS builder for `data_cfg`, generating the ArrayRecord files first when missing."""
  name, ddir = str(option(data_cfg, 'name')), data_dir(data_cfg)
  if name == 'synthetic_shapes':
    return synthetic_shapes.prepare(
        ddir, image_size=option(data_cfg, 'image_size'), num_train=option(data_cfg, 'num_train'),
        num_eval=option(data_cfg, 'num_eval'), max_shapes=option(data_cfg, 'max_shapes'),
        seed=option(data_cfg, 'synthetic_seed'), style=option(data_cfg, 'synthetic_style'),
        classes=option(data_cfg, 'synthetic_classes'), radius=option(data_cfg, 'synthetic_radius'))
  if name == 'image_folder':
    path = option(data_cfg, 'path')
    if not path:
      raise errors.DataError('data.path: image_folder needs the folder holding one sub-folder of images per class')
    return image_folder.prepare(os.path.expanduser(str(path)), ddir, option(data_cfg, 'min_side'))
  try:
    builder = tfds.builder(name, data_dir=ddir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise errors.DataError(f'data.name: {name!r} is not synthetic_shapes, image_folder, tokens or a TFDS dataset '
                     f'name ({str(e).splitlines()[0]})') from None
  if not builder.is_prepared():
    config = tfds.download.DownloadConfig()
    if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
      manual = os.path.expanduser(str(option(data_cfg, 'manual_dir') or os.path.join(ddir, 'downloads', 'manual')))
      if not os.path.isdir(manual) or not os.listdir(manual):
        what = ' '.join(str(builder.MANUAL_DOWNLOAD_INSTRUCTIONS).split())
        raise errors.DataError(f'data.manual_dir: {manual!r} is missing or empty; {name} needs its files there: {what}')
      config = tfds.download.DownloadConfig(manual_dir=manual)
    try:
      builder.download_and_prepare(file_format='array_record', download_config=config)
    except ModuleNotFoundError as e:  # TFDS's own builders write with tf.io.gfile; reading needs no TensorFlow.
      raise errors.DataError(f'data.name: preparing {name} under {ddir} needs the module {e.name!r}; install it, or '
                       f'build it elsewhere (tfds build {name} --file_format=array_record) and copy it to '
                       f'{ddir}, or extract its images to class folders and use data.name=image_folder') from e
  return builder


def open_source(data_cfg, split: str, *, tokenizer_fingerprint: str | None = None) -> Source:
  """Opens `split` of the dataset `data_cfg` describes (building or preparing it first if needed).

  Args:
    data_cfg: the `data` ConfigDict (keys in `var_jax.data.default_config`).
    split: split name (TFDS slicing such as 'train[:1000]' allowed for TFDS sources).
    tokenizer_fingerprint: the run's tokenizer identity; required for `data.name == 'tokens'`.
  Raises:
    errors.DataError: one line naming the field or path at fault.
  """
  if option(data_cfg, 'name') == 'tokens':
    path = option(data_cfg, 'path')
    if not path:
      raise errors.DataError('data.path: a tokens dataset needs the directory written by var_jax.tokenize --out')
    path = os.path.expanduser(str(path))
    records, info = tokens_lib.open_split(path, split, tokenizer_fingerprint=tokenizer_fingerprint)
    return Source(records=records, kind='tokens', num_classes=info['num_classes'], where=path)
  builder = prepare(data_cfg)
  info = builder.info
  image_key, label_key = info.supervised_keys or ('image', 'label')
  available = list(info.splits.keys())
  if available and split.split('[')[0] not in available:  # (`tfds.testing.mock_data` lists no splits.)
    raise errors.DataError(f'split {split!r} not in {builder.name} at {builder.data_dir} (it has {available}); '
                     'set data.train_split / data.eval_split')
  records = builder.as_data_source(split)
  where = str(builder.data_dir)
  if len(records) == 0:  # pylint: disable=g-explicit-length-test  # Not every source is truthy-aware.
    raise errors.DataError(f'{builder.name} split {split!r} at {where} is empty; put images there (or rebuild it)')
  return Source(records=records, kind='image', num_classes=info.features[label_key].num_classes, where=where,
                image_key=image_key, label_key=label_key)
