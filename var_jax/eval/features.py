"""Feature extractors chosen by name: `get_extractor('inception:PATH')`, `get_extractor('shapes:DIR')`.

An extractor has `dim` (feature width), `num_classes` (None when it has no classifier) and
maps uint8 images [N, H, W, 3] to (features [N, dim], class logits [N, num_classes] or None),
both float32 numpy. Logits rather than probabilities, so a softmax can be taken in float64:
`metrics.inception_score(scipy.special.softmax(logits.astype(np.float64), axis=1))`.
A new extractor is one entry in `EXTRACTORS`: a factory taking the text after the colon
(usually a weights path) and a batch size.

  inception:PATH  FID's InceptionV3 (`var_jax.eval.inception`): pool3 features (2048), 1008 logits.
  shapes:DIR      the synthetic_shapes classifier a `task = 'classifier'` run exports (`WORKDIR/classifier`,
                  `var_jax.weights.classifier`): penultimate features, one logit per shape kind; it takes
                  images of the size it was trained on only.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from var_jax import errors
from var_jax.eval import inception
from var_jax.weights import classifier as classifier_io


class Extractor(Protocol):
  dim: int
  num_classes: int | None

  def __call__(self, images_NHWC: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    ...


@dataclasses.dataclass
class JitExtractor:
  """Runs `apply_fn(variables, images_BHWC) -> (features_BD, logits_BK or None)` in fixed batches.

  Every batch has `batch_size` images (the last is zero-padded), so one compilation per
  image size serves a whole evaluation.
  """
  apply_fn: Callable[[Any, jax.Array], tuple[jax.Array, jax.Array | None]]
  variables: Any
  dim: int
  num_classes: int | None
  batch_size: int = 64
  class_names: tuple[str, ...] | None = None

  def __post_init__(self):
    self._step = jax.jit(self.apply_fn)
    self.variables = jax.device_put(self.variables)

  def __call__(self, images_NHWC: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    images = np.asarray(images_NHWC)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or not len(images):
      raise ValueError(f'feature extractor: expected uint8 images (N, H, W, 3) with N >= 1, got '
                       f'{images.dtype} {images.shape}')
    outputs = []  # device arrays; dispatch is asynchronous, so batches queue back to back
    for lo in range(0, len(images), self.batch_size):
      chunk = images[lo:lo + self.batch_size]
      if len(chunk) < self.batch_size:
        pad = np.zeros((self.batch_size - len(chunk),) + chunk.shape[1:], np.uint8)
        chunk = np.concatenate([chunk, pad])
      outputs.append(self._step(self.variables, chunk))
    n = len(images)
    features = np.concatenate([np.asarray(f) for f, _ in outputs])[:n]
    if outputs[0][1] is None:
      return features, None
    return features, np.concatenate([np.asarray(p) for _, p in outputs])[:n]


def _inception(path: str, batch_size: int) -> Extractor:
  if not path:
    raise errors.ConfigError("feature extractor 'inception' needs its weights file: 'inception:PATH'")
  return JitExtractor(inception.InceptionV3().apply, inception.load_params(path),
                      inception.FEATURE_DIM, inception.NUM_CLASSES, batch_size)


def _shapes(path: str, batch_size: int) -> Extractor:
  if not path:
    raise errors.ConfigError("feature extractor 'shapes' needs its classifier folder: 'shapes:DIR' (the "
                             "WORKDIR/classifier of a run of experiments/classifier_shapes.py)")
  folder = classifier_io.load(path)
  size = folder.image_size

  def apply(params, images_BHWC):
    if images_BHWC.shape[1:3] != (size, size):
      raise errors.ConfigError(f'feature extractor shapes:{path} was trained on {size}x{size} images, got '
                               f'{images_BHWC.shape[1]}x{images_BHWC.shape[2]}')
    return folder.model.apply({'params': params}, images_BHWC.astype(jnp.float32) / 127.5 - 1.0)

  return JitExtractor(apply, folder.params, folder.model.feature_dim, folder.model.num_classes, batch_size,
                      class_names=folder.classes)


EXTRACTORS: dict[str, Callable[[str, int], Extractor]] = {
    'inception': _inception,
    'shapes': _shapes,
}


def get_extractor(spec: str, batch_size: int = 64) -> Extractor:
  """'NAME' or 'NAME:ARG' (e.g. 'inception:/weights/pt_inception.pth') -> an extractor."""
  name, _, arg = spec.partition(':')
  if name not in EXTRACTORS:
    raise errors.ConfigError(f'unknown feature extractor {name!r} in {spec!r}; known: '
                             f'{", ".join(sorted(EXTRACTORS))}')
  return EXTRACTORS[name](arg, batch_size)
