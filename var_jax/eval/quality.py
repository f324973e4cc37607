"""Quality of a set of images against a reference: FD/FID, IS, precision/recall, sample accuracy.

Images come in batches (uint8 (n, H, W, 3), with their class labels or None), from sample chunks
(`generate.iter_chunks`), a folder of PNG/JPEG files, or an `.npz` with `arr_0` (and ADM's `arr_1`
labels). A reference is a folder or `.npz` of images, or an ADM-style `.npz` with `mu`/`sigma`;
precision and recall need its images (features), so with statistics alone they are None and a
note says why. Input problems are `errors.ConfigError` naming the file.
"""
from __future__ import annotations

import dataclasses
import os
import zipfile
from typing import Any, Iterable, Iterator

import numpy as np
from scipy import special

from var_jax import errors
from var_jax.eval import features as features_lib
from var_jax.eval import metrics

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg')
METRIC_KEYS = ('fid', 'is_mean', 'is_std', 'precision', 'recall', 'sample_accuracy')
BATCH = 500  # images read and featurised at a time

Batch = tuple[np.ndarray, 'np.ndarray | None']


def _image_files(folder: str) -> list[str]:
  names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_SUFFIXES))
  if not names:
    raise errors.ConfigError(f'{folder}: no {"/".join(IMAGE_SUFFIXES)} images')
  return [os.path.join(folder, n) for n in names]


def _read_image(path: str) -> np.ndarray:
  import PIL.Image  # pylint: disable=g-import-not-at-top
  try:
    with PIL.Image.open(path) as im:
      return np.asarray(im.convert('RGB'))
  except (OSError, ValueError) as e:
    raise errors.ConfigError(f'{path}: not a readable image ({e})') from None


def _npz(path: str):
  if not os.path.isfile(path):
    raise errors.ConfigError(f'{path}: no such folder or .npz file')
  try:
    f = np.load(path, allow_pickle=False)
  except (OSError, ValueError, zipfile.BadZipFile) as e:
    raise errors.ConfigError(f'{path}: not a readable .npz ({e})') from None
  if not isinstance(f, np.lib.npyio.NpzFile):
    raise errors.ConfigError(f'{path}: a single array, expected an .npz (arr_0, or mu and sigma)')
  return f


def image_batches(path: str) -> Iterator[Batch]:
  """(images, labels or None) batches of a folder of images or an `.npz` (`arr_0`, `arr_1` labels)."""
  if os.path.isdir(path):
    files = _image_files(path)
    shape = None
    for lo in range(0, len(files), BATCH):
      images = [_read_image(p) for p in files[lo:lo + BATCH]]
      for p, im in zip(files[lo:lo + BATCH], images):
        shape = shape or im.shape
        if im.shape != shape:
          raise errors.ConfigError(f'{p}: size {im.shape[:2]}, the first image is {shape[:2]}; '
                                   'resize the folder to one size')
      yield np.stack(images), None
    return
  with _npz(path) as f:
    if 'arr_0' not in f.files:
      raise errors.ConfigError(f'{path}: has keys {sorted(f.files)}, expected images in arr_0')
    images = f['arr_0']
    labels = f['arr_1'] if 'arr_1' in f.files else None
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
    raise errors.ConfigError(f'{path}: arr_0 is {images.dtype} {images.shape}, expected uint8 (N, H, W, 3)')
  if labels is not None and labels.shape != images.shape[:1]:
    labels = None  # not ADM's per-image class labels
  for lo in range(0, len(images), BATCH):
    yield images[lo:lo + BATCH], None if labels is None else labels[lo:lo + BATCH]


def chunk_batches(chunks: Iterable[dict[str, np.ndarray]]) -> Iterator[Batch]:
  for chunk in chunks:
    yield chunk['images'], chunk['labels']


@dataclasses.dataclass
class Featurised:
  """What an extractor makes of a set of images."""
  stats: metrics.GaussianStats | None
  features: np.ndarray | None
  logits: np.ndarray | None
  labels: np.ndarray | None

  @property
  def count(self) -> int:
    return 0 if self.features is None else len(self.features)


def featurise(extractor: features_lib.Extractor, batches: Iterable[Batch]) -> Featurised:
  feats, logits, labels = [], [], []
  for images, batch_labels in batches:
    f, l = extractor(images)
    if f.shape[1] != extractor.dim:
      raise errors.ConfigError(f'extractor gave features of width {f.shape[1]}, expected {extractor.dim}')
    feats.append(f)
    logits.append(l)
    labels.append(batch_labels)
  if not feats:
    raise errors.ConfigError('no images to evaluate')
  features = np.concatenate(feats)
  stats = metrics.feature_stats(features) if len(features) > 1 else None
  return Featurised(stats, features,
                    None if any(l is None for l in logits) else np.concatenate(logits),
                    None if any(l is None for l in labels) else np.concatenate(labels))


def reference(path: str, extractor: features_lib.Extractor) -> tuple[Featurised, list[str]]:
  """A reference (folder, images `.npz` or `mu`/`sigma` `.npz`) and notes on what it lacks."""
  if os.path.isdir(path):
    return featurise(extractor, image_batches(path)), []
  with _npz(path) as f:
    keys = set(f.files)
  if not keys & {'arr_0', 'mu'}:
    raise errors.ConfigError(f'{path}: has keys {sorted(keys)}, expected arr_0 images or mu and sigma')
  ref = featurise(extractor, image_batches(path)) if 'arr_0' in keys else Featurised(None, None, None, None)
  if 'mu' in keys:
    try:
      ref.stats = metrics.load_reference(path, extractor.dim)
    except ValueError as e:
      raise errors.ConfigError(str(e)) from None
  notes = [] if ref.features is not None else [
      f'precision/recall need reference images (arr_0); {path} has only mu/sigma']
  return ref, notes


def measure(samples: Featurised, ref: Featurised | None, num_classes: int | None,
            is_splits: int = 10, pr_k: int = 3) -> dict[str, Any]:
  """fid, is_mean, is_std, precision, recall, sample_accuracy, num_images (None where not measurable)."""
  out: dict[str, Any] = dict(dict.fromkeys(METRIC_KEYS), num_images=samples.count)
  if ref is not None and ref.stats is not None and samples.stats is not None:
    out['fid'] = metrics.frechet_distance(samples.stats, ref.stats)
  if ref is not None and ref.features is not None and min(samples.count, ref.count) > pr_k:
    out['precision'], out['recall'] = metrics.precision_recall(ref.features, samples.features, k=pr_k)
  if samples.logits is not None and samples.count >= is_splits:
    probs = special.softmax(samples.logits.astype(np.float64), axis=1)
    out['is_mean'], out['is_std'] = metrics.inception_score(probs, is_splits)
  if samples.logits is not None and samples.labels is not None and num_classes:
    labels = np.asarray(samples.labels)
    if labels.min() >= 0 and labels.max() < num_classes:
      out['sample_accuracy'] = metrics.sample_accuracy(samples.logits, labels)[0]
  return out
