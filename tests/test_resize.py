"""Resize matrices (area, bicubic, bilinear) against torch F.interpolate and a naive 2-D loop."""
import fractions
import math

import jax.numpy as jnp
import numpy as np
import pytest

from var_jax.models import resize

# Dividing, non-dividing (the scales VAR uses) and upsampling pairs.
SIZES = [(4, 3), (16, 13), (16, 10), (8, 5), (10, 7), (16, 1), (16, 2), (13, 10), (7, 7),
         (1, 16), (2, 16), (3, 16), (5, 16), (13, 16), (4, 8), (6, 5), (3, 7)]


def _naive_area_2d(x_hw, out_h, out_w):
  """Adaptive average pooling by its definition, one output pixel at a time."""
  in_h, in_w = x_hw.shape
  out = np.zeros((out_h, out_w))
  for i in range(out_h):
    r0 = math.floor(fractions.Fraction(i * in_h, out_h))
    r1 = math.ceil(fractions.Fraction((i + 1) * in_h, out_h))
    for j in range(out_w):
      c0 = math.floor(fractions.Fraction(j * in_w, out_w))
      c1 = math.ceil(fractions.Fraction((j + 1) * in_w, out_w))
      out[i, j] = x_hw[r0:r1, c0:c1].mean()
  return out


@pytest.fixture(scope='module')
def torch_f():
  torch = pytest.importorskip('torch', reason='torch is not installed: no torch reference')
  return torch, torch.nn.functional


@pytest.mark.parametrize('n_in,n_out', SIZES)
def test_area_matrices_match_naive_loop(n_in, n_out):
  x = np.random.RandomState(n_in * 31 + n_out).randn(n_in, n_in + 1)
  got = resize.area_matrix(n_in, n_out) @ x @ resize.area_matrix(n_in + 1, n_out + 2).T
  np.testing.assert_allclose(got, _naive_area_2d(x, n_out, n_out + 2), rtol=0, atol=1e-6)


def test_area_resize_matches_naive_loop():
  x = np.random.RandomState(3).randn(2, 16, 10, 3).astype(np.float32)
  got = np.asarray(resize.area_resize(jnp.asarray(x), (13, 7)))
  for b in range(2):
    for c in range(3):
      np.testing.assert_allclose(got[b, :, :, c], _naive_area_2d(x[b, :, :, c], 13, 7),
                                 rtol=0, atol=2e-6)


_MODES = {'area': (resize.area_matrix, resize.area_resize, {}),
          'bicubic': (resize.bicubic_matrix, resize.bicubic_resize, {'align_corners': False}),
          'bilinear': (resize.bilinear_matrix, resize.bilinear_resize, {'align_corners': False})}


@pytest.mark.parametrize('mode', sorted(_MODES))
def test_matrices_match_torch_on_basis_vectors(torch_f, mode):
  torch, F = torch_f
  matrix_fn, _, kwargs = _MODES[mode]
  for n_in, n_out in SIZES:
    eye = torch.eye(n_in, dtype=torch.float32).reshape(n_in, 1, 1, n_in)
    # Resizing the basis vector e_j along the last axis gives column j of the matrix.
    want = F.interpolate(eye, size=(1, n_out), mode=mode, **kwargs)
    np.testing.assert_allclose(matrix_fn(n_in, n_out), want.reshape(n_in, n_out).numpy().T,
                               rtol=0, atol=1e-6, err_msg=f'{mode} {n_in}->{n_out}')


@pytest.mark.parametrize('mode', sorted(_MODES))
@pytest.mark.parametrize('size_in,size_out', [((16, 10), (13, 7)), ((4, 3), (16, 16))])
def test_resize_matches_torch(torch_f, mode, size_in, size_out):
  torch, F = torch_f
  _, resize_fn, kwargs = _MODES[mode]
  x = np.random.RandomState(0).randn(2, 3, *size_in).astype(np.float32)
  want = F.interpolate(torch.from_numpy(x), size=size_out, mode=mode, **kwargs).numpy()
  got = np.asarray(resize_fn(jnp.asarray(x.transpose(0, 2, 3, 1)), size_out))
  np.testing.assert_allclose(got.transpose(0, 3, 1, 2), want, rtol=0, atol=1e-5)


def test_bilinear_weights_equal_torch_bit_for_bit(torch_f):
  # Editing thresholds the resized mask at 0.5: an ulp off in a weight can flip a token.
  torch, F = torch_f
  for n_in in range(1, 34):
    eye = torch.eye(n_in, dtype=torch.float32).reshape(n_in, 1, 1, n_in)
    for n_out in range(1, 34):
      want = F.interpolate(eye, size=(1, n_out), mode='bilinear', align_corners=False)
      np.testing.assert_array_equal(resize.bilinear_matrix(n_in, n_out),
                                    want.reshape(n_in, n_out).numpy().T, err_msg=f'{n_in}->{n_out}')


def test_bicubic_differs_from_jax_image_resize():
  # Guards the reason this module exists: jax's cubic is not torch's.
  import jax  # pylint: disable=g-import-not-at-top
  x = jnp.asarray(np.random.RandomState(1).randn(1, 4, 4, 1).astype(np.float32))
  ours = resize.bicubic_resize(x, (16, 16))
  theirs = jax.image.resize(x, (1, 16, 16, 1), 'cubic')
  assert float(jnp.abs(ours - theirs).max()) > 1e-3


def test_rows_sum_to_one_and_same_size_is_identity():
  for n_in, n_out in SIZES:
    np.testing.assert_allclose(resize.area_matrix(n_in, n_out).sum(1), 1, atol=1e-6)
    np.testing.assert_allclose(resize.bicubic_matrix(n_in, n_out).sum(1), 1, atol=1e-6)
    np.testing.assert_allclose(resize.bilinear_matrix(n_in, n_out).sum(1), 1, atol=1e-6)
  np.testing.assert_array_equal(resize.bicubic_matrix(5, 5), np.eye(5, dtype=np.float32))
  np.testing.assert_array_equal(resize.area_matrix(5, 5), np.eye(5, dtype=np.float32))
  np.testing.assert_array_equal(resize.bilinear_matrix(5, 5), np.eye(5, dtype=np.float32))


def test_bad_size_is_a_clear_error():
  with pytest.raises(ValueError, match='resize sizes must be positive'):
    resize.area_matrix(4, 0)
