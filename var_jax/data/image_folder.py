"""`image_folder`: a TFDS builder over a folder of images with one sub-folder per class.

Layouts: `ROOT/<split>/<class>/*.jpg` (splits such as train, val, validation, test; as ImageNet folders are
usually laid out) or `ROOT/<class>/*.jpg` (everything is the 'train' split). Class ids follow the sorted
class folder names of all splits together; a class folder without files is skipped with a warning. Every file is decoded once while building: clean RGB JPEG/PNG
files are stored as they are, other modes (CMYK, grayscale, RGBA, palette, 16-bit) are converted to RGB and
stored as PNG, and unreadable, zero-byte, truncated or tiny files are skipped. The counts are logged and
kept in the dataset's metadata (`builder.info.metadata['problems']`).
"""
import collections
import dataclasses
import hashlib
import os
import pathlib

from absl import logging
from etils import epath
import PIL.Image
import tensorflow_datasets as tfds

from var_jax import errors
from var_jax.data import preprocess

SPLIT_DIRS = {'train': 'train', 'val': 'validation', 'validation': 'validation', 'test': 'test'}
_PASS_THROUGH = (b'\xff\xd8\xff', b'\x89PNG\r\n\x1a\n')  # JPEG and PNG magic numbers.


def scan(root: str | os.PathLike) -> tuple[dict[str, list[tuple[str, str]]], list[str]]:
  """Finds the splits, classes and files under `root`.

  Returns:
    ({split: [(path, class_name), ...]}, sorted class names).
  Raises:
    errors.DataError: when root is missing or holds no class folders with files.
  """
  root = pathlib.Path(root)
  if not root.is_dir():
    raise errors.DataError(f'image_folder: data.path {str(root)!r} is not a directory; put one sub-folder of images '
                     'per class there (or train/ and val/ holding such sub-folders)')
  subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith('.'))
  split_dirs = [p for p in subdirs if p.name in SPLIT_DIRS]
  if split_dirs and len(split_dirs) == len(subdirs):
    by_split = {SPLIT_DIRS[p.name]: p for p in split_dirs}
  else:
    by_split = {'train': root}
  files, classes = {}, set()
  for split, split_dir in by_split.items():
    items = []
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith('.')):
      found = []
      for dirpath, dirnames, filenames in os.walk(class_dir):
        dirnames.sort()
        found += [(os.path.join(dirpath, f), class_dir.name) for f in sorted(filenames)
                  if not f.startswith('.')]
      if not found:
        logging.warning('image_folder: class folder %s holds no files; skipped (not a class)', class_dir)
        continue
      items += found
      classes.add(class_dir.name)
    files[split] = items
  if not any(files.values()):
    raise errors.DataError(f'image_folder: no images found under {str(root)!r}; put one sub-folder of images per '
                     'class there (or train/ and val/ holding such sub-folders)')
  return files, sorted(classes)


def encode_file(path: str, min_side: int = preprocess.MIN_SIDE) -> tuple[bytes | PIL.Image.Image | None, str | None]:
  """Reads one image file for storage; returns (bytes or PIL image to store, or None if skipped; problem)."""
  try:
    data = pathlib.Path(path).read_bytes()
  except OSError:
    return None, 'corrupt'
  img, problem = preprocess.decode_image(data, min_side)
  if img is None:
    return None, problem
  if problem is None and data.startswith(_PASS_THROUGH):
    return data, None
  return PIL.Image.fromarray(img), problem


@dataclasses.dataclass(eq=False)
class ImageFolderConfig(tfds.core.BuilderConfig):
  root: str = ''
  min_side: int = preprocess.MIN_SIDE


def make_config(root: str, min_side: int = preprocess.MIN_SIDE) -> ImageFolderConfig:
  """A config named after the folder (readable) and a hash of its absolute path (unique)."""
  root = os.path.abspath(os.path.expanduser(root))
  digest = hashlib.sha1(root.encode()).hexdigest()[:10]
  stem = ''.join(c if c.isalnum() else '_' for c in os.path.basename(root.rstrip('/')))[:40] or 'root'
  return ImageFolderConfig(name=f'{stem}_{digest}', root=root, min_side=min_side)


class ImageFolder(tfds.core.GeneratorBasedBuilder):
  """Images from `ROOT/[split/]class/file`, decoded, checked and converted once at build time."""
  # Our own file, so TFDS need not resolve package resources (which wants importlib_resources).
  code_path = epath.Path(__file__)
  VERSION = tfds.core.Version('1.0.0')
  BUILDER_CONFIGS = []

  def _info(self) -> tfds.core.DatasetInfo:
    _, classes = scan(self.builder_config.root)
    return tfds.core.DatasetInfo(
        builder=self,
        description=f'Image folder {self.builder_config.root}',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3)),
            'label': tfds.features.ClassLabel(names=classes),
            'file_name': tfds.features.Text(),
        }),
        supervised_keys=('image', 'label'),
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    files, _ = scan(self.builder_config.root)
    return {split: self._generate_examples(split, items) for split, items in files.items() if items}

  def _generate_examples(self, split: str, items: list[tuple[str, str]]):
    counts = collections.Counter()
    for path, class_name in items:
      stored, problem = encode_file(path, self.builder_config.min_side)
      counts[problem or 'ok'] += 1
      if problem:
        logging.log_every_n(logging.WARNING, 'image_folder: %s image %s', 50, problem, path)
      if stored is not None:
        yield path, {'image': stored, 'label': class_name,
                     'file_name': os.path.relpath(path, self.builder_config.root)}
    skipped = {k: v for k, v in counts.items() if k in preprocess.SKIPPED}
    converted = {k: v for k, v in counts.items() if k in preprocess.CONVERTED}
    logging.info('image_folder %s/%s: %d stored, skipped %s, converted %s', self.builder_config.root, split,
                 sum(counts.values()) - sum(skipped.values()), skipped or 'none', converted or 'none')
    self.info.metadata.setdefault('problems', {})[split] = dict(counts)
    if counts and sum(skipped.values()) == sum(counts.values()):
      raise errors.DataError(f'image_folder: every file under {self.builder_config.root!r} ({split}) is unreadable; '
                       'put decodable images (JPEG, PNG, ...) in its class sub-folders')


def prepare(root: str, data_dir: str, min_side: int = preprocess.MIN_SIDE) -> ImageFolder:
  """Builds the ArrayRecord copy of the folder under `data_dir` if not already there; returns its builder."""
  scan(root)  # A clear error for a missing or empty folder before TFDS starts writing.
  b = ImageFolder(config=make_config(root, min_side), data_dir=data_dir)
  b.download_and_prepare(file_format='array_record')
  return b
