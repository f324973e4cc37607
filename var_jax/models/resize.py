"""Resizing that matches PyTorch's `F.interpolate` exactly, as per-axis matrices.

VAR moves features between scales with `F.interpolate(mode='area')` (down) and
`F.interpolate(mode='bicubic', align_corners=False)` (up); zero-shot editing resizes its
keep mask with `mode='bilinear'` (align_corners=False, no antialiasing). All three are
separable, so a 2-D resize is one (n_out, n_in) matrix per spatial axis. `jax.image.resize` differs
from both (it antialiases and uses a different cubic kernel), so we build the torch
weights ourselves. Matrices are computed in float64 on the host and cast to float32.
"""
import functools
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np

from var_jax import errors

# PyTorch's cubic convolution coefficient for `bicubic`.
_CUBIC_A = -0.75


def _check_sizes(n_in: int, n_out: int) -> None:
  if n_in < 1 or n_out < 1:
    raise errors.ConfigError(f'resize sizes must be positive, got n_in={n_in}, n_out={n_out}')


@functools.lru_cache(maxsize=None)
def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
  _check_sizes(n_in, n_out)
  m = np.zeros((n_out, n_in), np.float64)
  for i in range(n_out):
    # Adaptive average pooling windows: [floor(i*n/m), ceil((i+1)*n/m)), uneven when
    # the sizes do not divide.
    start = (i * n_in) // n_out
    end = -((-(i + 1) * n_in) // n_out)
    m[i, start:end] = 1.0 / (end - start)
  return m.astype(np.float32)


def area_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) float32 weights of torch `F.interpolate(mode='area')` on one axis."""
  return _area_matrix(int(n_in), int(n_out)).copy()


def _cubic_weights(t: float) -> Tuple[float, float, float, float]:
  """Weights of the taps at offsets -1, 0, 1, 2 for fractional position t in [0, 1)."""
  a = _CUBIC_A

  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def far(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  return far(t + 1), near(t), near(1 - t), far(2 - t)


@functools.lru_cache(maxsize=None)
def _bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
  _check_sizes(n_in, n_out)
  m = np.zeros((n_out, n_in), np.float64)
  # torch computes the scale and source coordinates in float32; mirror that so the
  # fractional offsets (and thus the weights) agree bit for bit where it matters.
  scale = np.float32(n_in) / np.float32(n_out)
  for i in range(n_out):
    # align_corners=False; for cubic torch does not clamp negative source coords.
    src = (np.float32(i) + np.float32(0.5)) * scale - np.float32(0.5)
    base = int(np.floor(src))
    t = float(src - np.float32(base))
    for offset, w in zip((-1, 0, 1, 2), _cubic_weights(t)):
      # Out-of-range taps read the border pixel.
      m[i, min(max(base + offset, 0), n_in - 1)] += w
  return m.astype(np.float32)


def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) float32 weights of torch bicubic (a=-0.75, align_corners=False)."""
  return _bicubic_matrix(int(n_in), int(n_out)).copy()


@functools.lru_cache(maxsize=None)
def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
  _check_sizes(n_in, n_out)
  m = np.zeros((n_out, n_in), np.float64)
  scale = np.float32(n_in) / np.float32(n_out)
  for i in range(n_out):
    # align_corners=False; linear modes clamp negative source coords to 0. torch's CPU kernel
    # computes scale * (i + 0.5) - 0.5 as one fused multiply-add in float32: exact in float64,
    # rounded once (a separate rounding of the product moves some weights by an ulp).
    src = np.float32(float(scale) * (i + 0.5) - 0.5)
    src = max(src, np.float32(0))
    base = min(int(np.floor(src)), n_in - 1)
    t = np.float32(min(max(src - np.float32(base), np.float32(0)), np.float32(1)))
    m[i, base] += np.float32(1) - t
    m[i, min(base + 1, n_in - 1)] += t  # the last pixel is its own right neighbour
  return m.astype(np.float32)


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) float32 weights of torch bilinear (align_corners=False, no antialias)."""
  return _bilinear_matrix(int(n_in), int(n_out)).copy()


def _resize(x_BhwC: jax.Array, size: Tuple[int, int], matrix_fn) -> jax.Array:
  h_out, w_out = (int(s) for s in size)
  _, h_in, w_in, _ = x_BhwC.shape
  if (h_in, w_in) == (h_out, w_out):
    return x_BhwC  # torch copies in this case too; skipping keeps the values exact.
  m_h = jnp.asarray(matrix_fn(h_in, h_out))
  m_w = jnp.asarray(matrix_fn(w_in, w_out))
  # HIGHEST: accelerators would otherwise round the float32 inputs to bfloat16.
  hi = jax.lax.Precision.HIGHEST
  y = jnp.einsum('oh,bhwc->bowc', m_h, x_BhwC, precision=hi)
  return jnp.einsum('pw,bowc->bopc', m_w, y, precision=hi)


def area_resize(x_BhwC: jax.Array, size: Tuple[int, int]) -> jax.Array:
  """Torch `area` resize of an NHWC array to spatial `size` = (h, w)."""
  return _resize(x_BhwC, size, _area_matrix)


def bicubic_resize(x_BhwC: jax.Array, size: Tuple[int, int]) -> jax.Array:
  """Torch `bicubic` (align_corners=False) resize of an NHWC array to `size` = (h, w)."""
  return _resize(x_BhwC, size, _bicubic_matrix)


def bilinear_resize(x_BhwC: jax.Array, size: Tuple[int, int]) -> jax.Array:
  """Torch `bilinear` (align_corners=False, no antialias) resize of an NHWC array to `size`.

  Torch sums along the width first, then the height; resizing the transposed array keeps
  that rounding order, which matters where the result is thresholded (editing masks).
  """
  h_out, w_out = size
  return _resize(x_BhwC.swapaxes(1, 2), (w_out, h_out), _bilinear_matrix).swapaxes(1, 2)
