"""Image reconstruction metrics: PSNR and SSIM, per image, jittable.

Both follow scikit-image's definitions so numbers are comparable with published tables:
`psnr` is `skimage.metrics.peak_signal_noise_ratio` and `ssim` is
`skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, channel_axis=-1)`, i.e. the Wang et al. (2004) recipe: an 11-tap
Gaussian window (sigma 1.5) and only the positions where the window fits inside the image.
Images are NHWC; the default data range 2.0 is that of images in [-1, 1].
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

_SSIM_SIGMA = 1.5
_SSIM_TRUNCATE = 3.5  # scikit-image's window: radius int(3.5 * 1.5 + 0.5) = 5, 11 taps
_SSIM_K1, _SSIM_K2 = 0.01, 0.03


def _check_pair(a, b, name: str) -> None:
  if a.shape != b.shape or a.ndim != 4:
    raise ValueError(f'{name}: expected two NHWC images of equal shape, got {a.shape} and {b.shape}')


def psnr(a_BHWC: jax.Array, b_BHWC: jax.Array, data_range: float = 2.0) -> jax.Array:
  """Peak signal-to-noise ratio in dB per image -> [B] (inf where the images are equal)."""
  _check_pair(a_BHWC, b_BHWC, 'psnr')
  diff = a_BHWC.astype(jnp.float32) - b_BHWC.astype(jnp.float32)
  mse_B = jnp.mean(jnp.square(diff), axis=(1, 2, 3))
  return 10.0 * jnp.log10(data_range**2 / mse_B)


@functools.lru_cache(maxsize=None)
def _gaussian_valid_matrix(n: int) -> np.ndarray:
  """(n - 10, n) matrix applying the normalised 11-tap Gaussian at every fully-inside position."""
  radius = int(_SSIM_TRUNCATE * _SSIM_SIGMA + 0.5)
  taps = 2 * radius + 1
  if n < taps:
    raise ValueError(f'ssim: images must be at least {taps}x{taps} pixels, got a side of {n}')
  x = np.arange(-radius, radius + 1, dtype=np.float64)
  g = np.exp(-0.5 * (x / _SSIM_SIGMA) ** 2)
  g /= g.sum()
  m = np.zeros((n - taps + 1, n), np.float64)
  for i in range(n - taps + 1):
    m[i, i:i + taps] = g
  return m.astype(np.float32)


def _blur(x_BHWC: jax.Array) -> jax.Array:
  """Separable Gaussian filter, 'valid' positions only: [B, H-10, W-10, C]."""
  gh = jnp.asarray(_gaussian_valid_matrix(x_BHWC.shape[1]))
  gw = jnp.asarray(_gaussian_valid_matrix(x_BHWC.shape[2]))
  hp = jax.lax.Precision.HIGHEST
  x = jnp.einsum('oh,bhwc->bowc', gh, x_BHWC, precision=hp)
  return jnp.einsum('pw,bowc->bopc', gw, x, precision=hp)


def ssim(a_BHWC: jax.Array, b_BHWC: jax.Array, data_range: float = 2.0) -> jax.Array:
  """Mean structural similarity per image -> [B], averaged over channels and valid positions."""
  _check_pair(a_BHWC, b_BHWC, 'ssim')
  a = a_BHWC.astype(jnp.float32)
  b = b_BHWC.astype(jnp.float32)
  c1 = (_SSIM_K1 * data_range) ** 2
  c2 = (_SSIM_K2 * data_range) ** 2
  mu_a, mu_b = _blur(a), _blur(b)
  var_a = _blur(a * a) - mu_a * mu_a
  var_b = _blur(b * b) - mu_b * mu_b
  cov = _blur(a * b) - mu_a * mu_b
  s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
  return jnp.mean(s, axis=(1, 2, 3))
