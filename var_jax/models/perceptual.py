"""LPIPS-style perceptual distance on VGG16 features, with weights read from a user's file.

Nothing is downloaded. The `.npz` uses the PyTorch key names, so it can be written from
torchvision's `vgg16().features` and the LPIPS `vgg.pth` heads with a few lines of numpy:
  features.{0,2,5,7,10,12,14,17,19,21,24,26,28}.weight  (out, in, 3, 3) and .bias (out,)
  lin{0..4}.model.1.weight  (1, C_k, 1, 1), optional: without them every channel weighs 1/C_k,
  which is the plain normalised-VGG-feature distance.
The distance (Zhang et al. 2018): shift/scale the input, take relu1_2, relu2_2, relu3_3,
relu4_3 and relu5_3, unit-normalise each feature vector over channels, and sum over layers the
spatial mean of the channel-weighted squared difference.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from var_jax import errors

# torchvision vgg16 `features` indices of the convolutions, grouped by the LPIPS slice they end.
_VGG_CONVS = ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))
_VGG_WIDTHS = (64, 128, 256, 512, 512)
# LPIPS ScalingLayer: inputs in [-1, 1] are mapped to ImageNet-normalised statistics.
_SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
_SCALE = np.array([0.458, 0.448, 0.450], np.float32)


def expected_shapes() -> dict[str, tuple[int, ...]]:
  """Every key `load_params` reads, with its PyTorch shape (the `lin*` heads are optional)."""
  shapes, c_in = {}, 3
  for k, (convs, width) in enumerate(zip(_VGG_CONVS, _VGG_WIDTHS)):
    for idx in convs:
      shapes[f'features.{idx}.weight'] = (width, c_in, 3, 3)
      shapes[f'features.{idx}.bias'] = (width,)
      c_in = width
    shapes[f'lin{k}.model.1.weight'] = (1, width, 1, 1)
  return shapes


def load_params(path: str) -> dict[str, Any]:
  """Reads the `.npz` into {'convs': [[(kernel HWIO, bias)]...], 'lins': [w_C, ...]} float32."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'perceptual: weights file {path!r} not found (give an .npz of VGG16 '
                            'features.* and optional lin*.model.1.weight arrays)')
  with np.load(path) as f:
    arrays = {k: f[k] for k in f.files}
  shapes = expected_shapes()
  missing = [k for k in shapes if k not in arrays and not k.startswith('lin')]
  bad = [f'{k} {arrays[k].shape} (expected {s})' for k, s in shapes.items()
         if k in arrays and arrays[k].shape != s]
  if missing or bad:
    raise errors.ConfigError(f'perceptual: {path}: missing keys {missing[:4]}'
                     f'{" ..." if len(missing) > 4 else ""}; mis-shaped {bad[:4]}')
  convs = [[(np.transpose(arrays[f'features.{i}.weight'], (2, 3, 1, 0)).astype(np.float32),
             arrays[f'features.{i}.bias'].astype(np.float32)) for i in idxs] for idxs in _VGG_CONVS]
  lins = []
  for k, width in enumerate(_VGG_WIDTHS):
    key = f'lin{k}.model.1.weight'
    lins.append(arrays[key].reshape(width).astype(np.float32) if key in arrays
                else np.full((width,), 1.0 / width, np.float32))
  return {'convs': convs, 'lins': lins}


def _features(params: dict[str, Any], x_BHWC: jax.Array) -> list[jax.Array]:
  x = (x_BHWC - _SHIFT) / _SCALE
  feats = []
  for k, block in enumerate(params['convs']):
    if k:
      x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), 'VALID')
    for kernel, bias in block:
      x = jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
      x = jax.nn.relu(x + bias)
    feats.append(x)
  return feats


def lpips(params: dict[str, Any], a_BHWC: jax.Array, b_BHWC: jax.Array) -> jax.Array:
  """Perceptual distance per image -> [B] (0 for identical images). Inputs in [-1, 1]."""
  if a_BHWC.shape != b_BHWC.shape or a_BHWC.ndim != 4 or a_BHWC.shape[-1] != 3:
    raise errors.ConfigError(f'lpips: expected two RGB NHWC images of equal shape, got {a_BHWC.shape} '
                     f'and {b_BHWC.shape}')
  fa = _features(params, a_BHWC.astype(jnp.float32))
  fb = _features(params, b_BHWC.astype(jnp.float32))
  total = 0.0
  for x, y, lin_C in zip(fa, fb, params['lins']):
    # LPIPS normalises with eps 1e-10 outside the square root.
    x = x / (jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True)) + 1e-10)
    y = y / (jnp.sqrt(jnp.sum(y * y, axis=-1, keepdims=True)) + 1e-10)
    total = total + jnp.mean(jnp.sum(jnp.square(x - y) * lin_C, axis=-1), axis=(1, 2))
  return total
