"""PSNR and SSIM agree with scikit-image on fixed images, and reject bad input."""
import jax
import numpy as np
import pytest
from skimage import data as skdata
from skimage import metrics as skmetrics

from var_jax.train import image_metrics


def _to_unit(img_uint8):
  return img_uint8.astype(np.float32) / 127.5 - 1.0


@pytest.fixture(scope='module')
def pairs():
  """(reference, distorted) NHWC batches in [-1, 1]: photos, noise, blur, and an odd size."""
  rng = np.random.default_rng(0)
  photos = np.stack([_to_unit(skdata.astronaut()[100:164, 180:244]),
                     _to_unit(skdata.chelsea()[50:114, 200:264]),
                     _to_unit(skdata.coffee()[150:214, 300:364])])
  noisy = np.clip(photos + rng.normal(0, 0.1, photos.shape), -1, 1).astype(np.float32)
  shifted = np.clip(np.roll(photos, 1, axis=2) * 0.9 + 0.05, -1, 1).astype(np.float32)
  odd_a = rng.uniform(-1, 1, (2, 23, 37, 3)).astype(np.float32)
  odd_b = np.clip(odd_a + rng.normal(0, 0.3, odd_a.shape), -1, 1).astype(np.float32)
  return [(photos, noisy), (photos, shifted), (odd_a, odd_b)]


def test_psnr_matches_scikit_image(pairs):
  f = jax.jit(image_metrics.psnr)
  for a, b in pairs:
    want = [skmetrics.peak_signal_noise_ratio(x, y, data_range=2.0) for x, y in zip(a, b)]
    np.testing.assert_allclose(np.asarray(f(a, b)), want, rtol=1e-5)


def test_ssim_matches_scikit_image(pairs):
  f = jax.jit(image_metrics.ssim)
  for a, b in pairs:
    want = [skmetrics.structural_similarity(x, y, data_range=2.0, gaussian_weights=True,
                                            sigma=1.5, use_sample_covariance=False,
                                            channel_axis=-1) for x, y in zip(a, b)]
    np.testing.assert_allclose(np.asarray(f(a, b)), want, atol=2e-5)


def test_identical_images():
  a = np.random.default_rng(1).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
  assert np.all(np.isinf(np.asarray(image_metrics.psnr(a, a))))
  np.testing.assert_allclose(np.asarray(image_metrics.ssim(a, a)), 1.0, atol=1e-5)


def test_bad_input_is_rejected():
  a = np.zeros((1, 16, 16, 3), np.float32)
  with pytest.raises(ValueError, match='equal shape'):
    image_metrics.psnr(a, a[:, :8])
  with pytest.raises(ValueError, match='at least 11x11'):
    image_metrics.ssim(a[:, :8, :8], a[:, :8, :8])
