"""Generation-quality metrics computed from features: FID, Inception Score, precision/recall.

The definitions are those of the ADM evaluator (openai/guided-diffusion
`evaluations/evaluator.py`), which published ImageNet tables use:
  - Fréchet distance between Gaussians fitted to two feature sets (float64, scipy `sqrtm`,
    retried with `eps` on the diagonals when the product is singular).
  - Inception Score exp(E_x KL(p(y|x) || p(y))), averaged over contiguous splits.
  - Improved precision and recall (Kynkäänniemi et al. 2019): a sample is "in" a set's
    manifold when it lies within the k-th-nearest-neighbour radius of some member of that set.
  - Sample accuracy (ours, for class-conditional samples and a classifier of their classes): the
    fraction of samples generated for class c that the classifier labels c, averaged over classes.
Reference statistics use the ADM `.npz` layout: `mu` (D,), `sigma` (D, D), optional `arr_0`
(N, H, W, 3) uint8 images. ADM's own reference files also hold `mu_s`/`sigma_s` (sFID spatial
statistics), which are not used here.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
from scipy import linalg, special


@dataclasses.dataclass(frozen=True)
class GaussianStats:
  """Mean and covariance (ddof=1) of a feature set, float64."""
  mu_D: np.ndarray
  sigma_DD: np.ndarray

  def __post_init__(self):
    d = self.mu_D.shape[0] if self.mu_D.ndim == 1 else -1
    if d < 1 or self.sigma_DD.shape != (d, d):
      raise ValueError(f'GaussianStats: expected mu (D,) and sigma (D, D), got {self.mu_D.shape} '
                       f'and {self.sigma_DD.shape}')

  @property
  def dim(self) -> int:
    return self.mu_D.shape[0]


def _check_features(x_ND: np.ndarray, name: str) -> np.ndarray:
  x = np.asarray(x_ND)
  if x.ndim != 2 or x.shape[0] < 1:
    raise ValueError(f'{name}: expected features of shape (N, D) with N >= 1, got {x.shape}')
  return x


class StatsAccumulator:
  """Streaming mean and covariance in float64, merged chunk by chunk (Chan et al. 1979).

  Each chunk is centred on its own mean before its scatter matrix is formed, so the result
  matches `np.cov` of the concatenated features to float64 precision, without holding them.
  """

  def __init__(self):
    self.count = 0
    self._mean_D = None
    self._scatter_DD = None

  def update(self, features_ND: np.ndarray) -> None:
    x = _check_features(features_ND, 'StatsAccumulator.update').astype(np.float64)
    if self._mean_D is not None and x.shape[1] != self._mean_D.shape[0]:
      raise ValueError(f'StatsAccumulator.update: features of dimension {x.shape[1]}, earlier '
                       f'chunks had {self._mean_D.shape[0]}')
    n_b = x.shape[0]
    mean_b = x.mean(axis=0)
    centred = x - mean_b
    scatter_b = centred.T @ centred
    if self._mean_D is None:
      self.count, self._mean_D, self._scatter_DD = n_b, mean_b, scatter_b
      return
    n = self.count + n_b
    delta = mean_b - self._mean_D
    self._scatter_DD = self._scatter_DD + scatter_b + np.outer(delta, delta) * (self.count * n_b / n)
    self._mean_D = self._mean_D + delta * (n_b / n)
    self.count = n

  def result(self) -> GaussianStats:
    if self.count < 2:
      raise ValueError(f'StatsAccumulator: a covariance needs at least 2 features, got {self.count}')
    return GaussianStats(self._mean_D.copy(), self._scatter_DD / (self.count - 1))


def feature_stats(features_ND: np.ndarray) -> GaussianStats:
  """Gaussian statistics of one in-memory feature set (as `np.mean`, `np.cov(rowvar=False)`)."""
  acc = StatsAccumulator()
  acc.update(features_ND)
  return acc.result()


def frechet_distance(a: GaussianStats | np.ndarray, b: GaussianStats | np.ndarray,
                     eps: float = 1e-6) -> float:
  """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)); each side stats or (N, D) features.

  A distance: rounding below 0 (identical sets give about -1e-13) is clamped to 0."""
  a = a if isinstance(a, GaussianStats) else feature_stats(a)
  b = b if isinstance(b, GaussianStats) else feature_stats(b)
  if a.dim != b.dim:
    raise ValueError(f'frechet_distance: feature dimensions differ ({a.dim} vs {b.dim}); were both '
                     'sides made by the same extractor?')
  s_a = a.sigma_DD.astype(np.float64)
  s_b = b.sigma_DD.astype(np.float64)
  covmean = linalg.sqrtm(s_a @ s_b)
  if not np.isfinite(covmean).all():
    # A singular product (fewer samples than dimensions): regularise both covariances.
    offset = np.eye(a.dim) * eps
    covmean = linalg.sqrtm((s_a + offset) @ (s_b + offset))
  if np.iscomplexobj(covmean):
    # Rounding leaves a tiny imaginary part; a large one means a covariance is not PSD.
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(f'frechet_distance: sqrtm has an imaginary component of '
                       f'{np.max(np.abs(covmean.imag)):.3g}; is each sigma a valid covariance?')
    covmean = covmean.real
  diff = a.mu_D.astype(np.float64) - b.mu_D.astype(np.float64)
  return max(float(diff @ diff + np.trace(s_a) + np.trace(s_b) - 2.0 * np.trace(covmean)), 0.0)


def inception_score(probs_NK: np.ndarray, splits: int = 10) -> tuple[float, float]:
  """Mean and std over `splits` contiguous chunks of exp(E_x KL(p(y|x) || p(y))).

  With 50k samples this is the ADM evaluator's recipe (splits of 5000, no shuffling; ADM
  reports the mean). Rows are class probabilities (softmax outputs), not logits.
  """
  p = _check_features(probs_NK, 'inception_score').astype(np.float64)
  if p.shape[0] < splits:
    raise ValueError(f'inception_score: {p.shape[0]} samples cannot make {splits} splits')
  if (p < 0).any() or not np.allclose(p.sum(axis=1), 1.0, atol=1e-3):
    raise ValueError('inception_score: rows must be probabilities (non-negative, summing to 1); '
                     'apply a softmax to logits first')
  n = p.shape[0]
  scores = []
  for i in range(splits):
    part = p[i * n // splits:(i + 1) * n // splits]
    kl = special.rel_entr(part, part.mean(axis=0, keepdims=True)).sum(axis=1).mean()
    scores.append(np.exp(kl))
  return float(np.mean(scores)), float(np.std(scores))


def sample_accuracy(logits_NK: np.ndarray, labels_N: np.ndarray) -> tuple[float, np.ndarray]:
  """(mean over classes, per class [K]) of the fraction of samples generated for class c labelled c.

  `labels_N` are the classes the samples were generated for and `logits_NK` a classifier's outputs. A class
  with no samples has NaN in the per-class array and does not enter the mean.
  """
  logits = _check_features(logits_NK, 'sample_accuracy')
  labels = np.asarray(labels_N)
  k = logits.shape[1]
  if labels.shape != (logits.shape[0],) or not np.issubdtype(labels.dtype, np.integer) or (
      labels.min() < 0 or labels.max() >= k):
    raise ValueError(f'sample_accuracy: expected integer labels (N,) = ({logits.shape[0]},) in [0, {k}), got '
                     f'{labels.dtype} {labels.shape}')
  hits_N = np.argmax(logits, axis=1) == labels
  counts_K = np.bincount(labels, minlength=k)
  with np.errstate(invalid='ignore', divide='ignore'):
    per_class_K = np.bincount(labels, weights=hits_N, minlength=k) / counts_K
  return float(np.nanmean(per_class_K)), per_class_K


# --- improved precision and recall -----------------------------------------------------------

def _sq_dists(a_RD: jax.Array, b_CD: jax.Array) -> jax.Array:
  """Pairwise squared Euclidean distances [R, C], clipped at 0 (as the ADM DistanceBlock)."""
  ab = jnp.einsum('rd,cd->rc', a_RD, b_CD, precision=jax.lax.Precision.HIGHEST)
  aa = jnp.sum(a_RD * a_RD, axis=1)[:, None]
  bb = jnp.sum(b_CD * b_CD, axis=1)[None, :]
  return jnp.maximum(aa - 2.0 * ab + bb, 0.0)


@functools.partial(jax.jit, static_argnames=('k',))
def _kth_neighbour_sq_radii(x_nBD: jax.Array, valid_nB: jax.Array, k: int) -> jax.Array:
  """Squared distance of every row to its k-th nearest neighbour in the set, self excluded."""
  block = x_nBD.shape[1]

  def row_block(x_BD):
    def col_block(best_BK, inputs):
      y_BD, valid_B = inputs
      d_BB = jnp.where(valid_B[None, :], _sq_dists(x_BD, y_BD), jnp.inf)
      neg, _ = jax.lax.top_k(-jnp.concatenate([best_BK, d_BB], axis=1), k + 1)
      return -neg, None
    # The k+1 smallest include the point itself at distance 0, so index k is the k-th other.
    best_BK, _ = jax.lax.scan(col_block, jnp.full((block, k + 1), jnp.inf), (x_nBD, valid_nB))
    return best_BK[:, k]

  return jax.lax.map(row_block, x_nBD)


@jax.jit
def _covered(query_nBD: jax.Array, ref_mBD: jax.Array, ref_sq_radii_mB: jax.Array) -> jax.Array:
  """Whether each query lies within the radius of some reference point [n, B]."""
  def row_block(q_BD):
    def col_block(hit_B, inputs):
      r_BD, rad_B = inputs
      return hit_B | jnp.any(_sq_dists(q_BD, r_BD) <= rad_B[None, :], axis=1), None
    hit_B, _ = jax.lax.scan(col_block, jnp.zeros(q_BD.shape[0], bool), (ref_mBD, ref_sq_radii_mB))
    return hit_B

  return jax.lax.map(row_block, query_nBD)


def _blocks(x_ND: np.ndarray, block: int) -> tuple[jax.Array, np.ndarray]:
  """Zero-pads rows to a multiple of `block` -> ([n, block, D] float32, valid mask [n, block])."""
  n, d = x_ND.shape
  block = min(block, n)
  nb = -(-n // block)
  padded = np.zeros((nb * block, d), np.float32)
  padded[:n] = x_ND
  valid = (np.arange(nb * block) < n).reshape(nb, block)
  return jnp.asarray(padded.reshape(nb, block, d)), valid


def precision_recall(real_ND: np.ndarray, fake_ND: np.ndarray, k: int = 3,
                     block: int = 4096) -> tuple[float, float]:
  """Improved precision (fakes inside the real manifold) and recall (reals inside the fake one).

  Distances are float32 with the highest matmul precision and are formed `block` x `block`
  at a time, so memory stays O(block^2) whatever N. ADM computes them in float16 when that
  stays finite, so points exactly on a radius may count differently there.
  """
  real = _check_features(real_ND, 'precision_recall (real)')
  fake = _check_features(fake_ND, 'precision_recall (fake)')
  if real.shape[1] != fake.shape[1]:
    raise ValueError(f'precision_recall: real features have dimension {real.shape[1]}, fake '
                     f'{fake.shape[1]}')
  if min(real.shape[0], fake.shape[0]) <= k:
    raise ValueError(f'precision_recall: each set needs more than k={k} features, got '
                     f'{real.shape[0]} real and {fake.shape[0]} fake')
  real_x, real_valid = _blocks(real, block)
  fake_x, fake_valid = _blocks(fake, block)
  # Padded rows get radius -inf, so they never cover anything.
  real_r = jnp.where(real_valid, _kth_neighbour_sq_radii(real_x, real_valid, k), -jnp.inf)
  fake_r = jnp.where(fake_valid, _kth_neighbour_sq_radii(fake_x, fake_valid, k), -jnp.inf)
  precision = np.asarray(_covered(fake_x, real_x, real_r))[fake_valid].mean()
  recall = np.asarray(_covered(real_x, fake_x, fake_r))[real_valid].mean()
  return float(precision), float(recall)


# --- ADM-style reference files ---------------------------------------------------------------

def _open_npz(path: str):
  if not os.path.isfile(path):
    raise FileNotFoundError(f'reference file {path!r} not found')
  try:
    f = np.load(path, allow_pickle=False)
  except (OSError, ValueError, zipfile.BadZipFile) as e:
    raise ValueError(f'reference file {path}: not a readable .npz ({e})') from None
  if not isinstance(f, np.lib.npyio.NpzFile):
    raise ValueError(f'reference file {path}: a single array, expected an .npz with mu and sigma')
  return f


def load_reference(path: str, dim: int | None = None) -> GaussianStats:
  """Reads `mu` and `sigma` from an ADM-style `.npz` (the images in `arr_0` are not loaded)."""
  with _open_npz(path) as f:
    if 'mu' not in f.files or 'sigma' not in f.files:
      raise ValueError(f'reference file {path}: has keys {sorted(f.files)}, needs mu and sigma '
                       '(a sample batch with only arr_0 needs its statistics computed first)')
    mu, sigma = f['mu'].astype(np.float64), f['sigma'].astype(np.float64)
  if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
    raise ValueError(f'reference file {path}: mu {mu.shape} and sigma {sigma.shape} are not '
                     '(D,) and (D, D)')
  if dim is not None and mu.shape[0] != dim:
    raise ValueError(f'reference file {path}: statistics of dimension {mu.shape[0]}, the '
                     f'extractor gives {dim}')
  return GaussianStats(mu, sigma)


def load_reference_images(path: str) -> np.ndarray:
  """The `arr_0` images of an ADM-style `.npz`, uint8 (N, H, W, 3)."""
  with _open_npz(path) as f:
    if 'arr_0' not in f.files:
      raise ValueError(f'reference file {path}: has keys {sorted(f.files)}, no arr_0 images')
    images = f['arr_0']
  _check_images(images, f'reference file {path}: arr_0')
  return images


def _check_images(images, name: str) -> None:
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f'{name}: expected uint8 images (N, H, W, 3), got {images.dtype} '
                     f'{images.shape}')


def save_reference(path: str, stats: GaussianStats, images_NHWC: np.ndarray | None = None) -> None:
  """Writes `mu`, `sigma` (float64) and optionally `arr_0` images; atomic via a rename."""
  arrays = {'mu': stats.mu_D.astype(np.float64), 'sigma': stats.sigma_DD.astype(np.float64)}
  if images_NHWC is not None:
    _check_images(np.asarray(images_NHWC), 'save_reference: images')
    arrays['arr_0'] = np.asarray(images_NHWC)
  tmp = f'{path}.tmp'
  with open(tmp, 'wb') as f:
    np.savez(f, **arrays)
  os.replace(tmp, path)
