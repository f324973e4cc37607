"""The InceptionV3 of FID (TF graph `inception-2015-12-05`) in Flax, with weights from a user's file.

This is the network the ADM evaluator runs, in the layout of torch-fidelity's
`FeatureExtractorInceptionV3` (a pure-PyTorch port of that graph): uint8 images of any
size are resized to 299x299 with TensorFlow 1.x's bilinear resize (align_corners=False,
no half-pixel centres), mapped to [-1, 1] by (x - 128) / 128, and run through the graph's
blocks, whose quirks are kept: average pools exclude padding, and Mixed_7c's pool branch
is a max pool. Outputs are the 2048-d pool3 features (FID, precision/recall) and the
1008-way logits without the fc bias, which is what ADM's softmax and torch-fidelity's
`logits_unbiased` feed the Inception Score.

Weights are never downloaded. `load_params` reads torch-fidelity's
`weights-inception-2015-12-05-6726825d.pth`, pytorch-fid's
`pt_inception-2015-12-05-6726825d.pth` (torchvision key names, the same ones), or an
`.npz` holding the same tensors under the same names, e.g. written by
`np.savez(out, **{k: v.numpy() for k, v in torch.load(pth).items()})`.
"""
from __future__ import annotations

import functools
import os
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_CLASSES = 1008
TORCH_FIDELITY_URL = ('https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/'
                      'weights-inception-2015-12-05-6726825d.pth')
PYTORCH_FID_URL = ('https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/'
                   'pt_inception-2015-12-05-6726825d.pth')
_HIGHEST = jax.lax.Precision.HIGHEST


def _tf1_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Low/high source indices and weights of TF1 `resize_bilinear` on one axis, in float32."""
  pos = np.arange(n_out, dtype=np.float32) * np.float32(n_in / n_out)
  lo = pos.astype(np.int32)  # positions are >= 0, so truncation is floor
  hi = np.minimum(lo + 1, n_in - 1)
  return lo, hi, pos - lo.astype(np.float32)


def resize_bilinear_tf1(x_BHWC: jax.Array, height: int, width: int) -> jax.Array:
  """TensorFlow 1.x `tf.image.resize_bilinear(align_corners=False)`: source = dest * in / out.

  The interpolation order (along W on both source rows, then along H) is TF's, which keeps
  float32 rounding close to the graph's.
  """
  y_lo, y_hi, dy = _tf1_taps(x_BHWC.shape[1], height)
  x_lo, x_hi, dx = _tf1_taps(x_BHWC.shape[2], width)

  def along_w(rows):
    left, right = rows[:, :, x_lo], rows[:, :, x_hi]
    return left + (right - left) * dx[None, None, :, None]

  top, bottom = along_w(x_BHWC[:, y_lo]), along_w(x_BHWC[:, y_hi])
  return top + (bottom - top) * dy[None, :, None, None]


def _avg_pool(x):
  """3x3 stride-1 average over the valid taps only (TF 'SAME' pooling)."""
  return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool(x, stride: int = 2, pad: int = 0):
  return nn.max_pool(x, (3, 3), (stride, stride), padding=((pad, pad), (pad, pad)))


class _ConvBN(nn.Module):
  """Bias-free convolution, inference batch norm (eps 1e-3), ReLU."""
  features: int
  kernel: tuple[int, int] = (1, 1)
  stride: int = 1
  same: bool = False  # pad k // 2 on each side (the graph's stride-1 'SAME'); else no padding

  @nn.compact
  def __call__(self, x):
    padding = [(k // 2, k // 2) for k in self.kernel] if self.same else 'VALID'
    x = nn.Conv(self.features, self.kernel, self.stride, padding=padding, use_bias=False,
                precision=_HIGHEST, name='conv')(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name='bn')(x)
    return nn.relu(x)


def _conv(features, kernel=1, stride=1, same=False, name=None):
  kernel = (kernel, kernel) if isinstance(kernel, int) else kernel
  return _ConvBN(features, kernel, stride, same, name=name)


class _MixedA(nn.Module):
  """Mixed_5b..5d: 1x1, 5x5, double 3x3 and pooled branches at 35x35."""
  pool_features: int

  @nn.compact
  def __call__(self, x):
    a = _conv(64, name='branch1x1')(x)
    b = _conv(48, name='branch5x5_1')(x)
    b = _conv(64, 5, same=True, name='branch5x5_2')(b)
    c = _conv(64, name='branch3x3dbl_1')(x)
    c = _conv(96, 3, same=True, name='branch3x3dbl_2')(c)
    c = _conv(96, 3, same=True, name='branch3x3dbl_3')(c)
    d = _conv(self.pool_features, name='branch_pool')(_avg_pool(x))
    return jnp.concatenate([a, b, c, d], axis=-1)


class _MixedB(nn.Module):
  """Mixed_6a: 35x35 -> 17x17."""

  @nn.compact
  def __call__(self, x):
    a = _conv(384, 3, 2, name='branch3x3')(x)
    b = _conv(64, name='branch3x3dbl_1')(x)
    b = _conv(96, 3, same=True, name='branch3x3dbl_2')(b)
    b = _conv(96, 3, 2, name='branch3x3dbl_3')(b)
    return jnp.concatenate([a, b, _max_pool(x)], axis=-1)


class _MixedC(nn.Module):
  """Mixed_6b..6e: factorised 7x7 branches at 17x17."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    a = _conv(192, name='branch1x1')(x)
    b = _conv(c7, name='branch7x7_1')(x)
    b = _conv(c7, (1, 7), same=True, name='branch7x7_2')(b)
    b = _conv(192, (7, 1), same=True, name='branch7x7_3')(b)
    c = _conv(c7, name='branch7x7dbl_1')(x)
    c = _conv(c7, (7, 1), same=True, name='branch7x7dbl_2')(c)
    c = _conv(c7, (1, 7), same=True, name='branch7x7dbl_3')(c)
    c = _conv(c7, (7, 1), same=True, name='branch7x7dbl_4')(c)
    c = _conv(192, (1, 7), same=True, name='branch7x7dbl_5')(c)
    d = _conv(192, name='branch_pool')(_avg_pool(x))
    return jnp.concatenate([a, b, c, d], axis=-1)


class _MixedD(nn.Module):
  """Mixed_7a: 17x17 -> 8x8."""

  @nn.compact
  def __call__(self, x):
    a = _conv(192, name='branch3x3_1')(x)
    a = _conv(320, 3, 2, name='branch3x3_2')(a)
    b = _conv(192, name='branch7x7x3_1')(x)
    b = _conv(192, (1, 7), same=True, name='branch7x7x3_2')(b)
    b = _conv(192, (7, 1), same=True, name='branch7x7x3_3')(b)
    b = _conv(192, 3, 2, name='branch7x7x3_4')(b)
    return jnp.concatenate([a, b, _max_pool(x)], axis=-1)


class _MixedE(nn.Module):
  """Mixed_7b/7c: split 1x3 / 3x1 branches at 8x8; the graph's 7c pools by max, not average."""
  max_pool: bool

  @nn.compact
  def __call__(self, x):
    a = _conv(320, name='branch1x1')(x)
    b = _conv(384, name='branch3x3_1')(x)
    b = jnp.concatenate([_conv(384, (1, 3), same=True, name='branch3x3_2a')(b),
                         _conv(384, (3, 1), same=True, name='branch3x3_2b')(b)], axis=-1)
    c = _conv(448, name='branch3x3dbl_1')(x)
    c = _conv(384, 3, same=True, name='branch3x3dbl_2')(c)
    c = jnp.concatenate([_conv(384, (1, 3), same=True, name='branch3x3dbl_3a')(c),
                         _conv(384, (3, 1), same=True, name='branch3x3dbl_3b')(c)], axis=-1)
    pooled = _max_pool(x, stride=1, pad=1) if self.max_pool else _avg_pool(x)
    d = _conv(192, name='branch_pool')(pooled)
    return jnp.concatenate([a, b, c, d], axis=-1)


class InceptionV3(nn.Module):
  """uint8 images [B, H, W, 3] -> (pool3 features [B, 2048], unbiased logits [B, 1008])."""

  @nn.compact
  def __call__(self, images_BHWC: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = resize_bilinear_tf1(images_BHWC.astype(jnp.float32), INPUT_SIZE, INPUT_SIZE)
    x = (x - 128.0) / 128.0
    x = _conv(32, 3, 2, name='Conv2d_1a_3x3')(x)         # 149
    x = _conv(32, 3, name='Conv2d_2a_3x3')(x)            # 147
    x = _conv(64, 3, same=True, name='Conv2d_2b_3x3')(x)
    x = _max_pool(x)                                     # 73
    x = _conv(80, name='Conv2d_3b_1x1')(x)
    x = _conv(192, 3, name='Conv2d_4a_3x3')(x)           # 71
    x = _max_pool(x)                                     # 35
    for name, pool_features in (('Mixed_5b', 32), ('Mixed_5c', 64), ('Mixed_5d', 64)):
      x = _MixedA(pool_features, name=name)(x)
    x = _MixedB(name='Mixed_6a')(x)                      # 17
    for name, c7 in (('Mixed_6b', 128), ('Mixed_6c', 160), ('Mixed_6d', 160), ('Mixed_6e', 192)):
      x = _MixedC(c7, name=name)(x)
    x = _MixedD(name='Mixed_7a')(x)                      # 8
    x = _MixedE(max_pool=False, name='Mixed_7b')(x)
    x = _MixedE(max_pool=True, name='Mixed_7c')(x)
    pool_BD = jnp.mean(x, axis=(1, 2))
    logits_BK = nn.Dense(NUM_CLASSES, use_bias=False, precision=_HIGHEST, name='fc')(pool_BD)
    return pool_BD, logits_BK


# --- weights ----------------------------------------------------------------------------------

# (Flax collection, leaf) -> PyTorch suffix; module paths are the same names in both.
_TORCH_LEAF = {
    ('params', 'kernel'): 'weight',  # conv (O, I, kh, kw) -> HWIO; fc (K, D) -> (D, K)
    ('params', 'scale'): 'weight',
    ('params', 'bias'): 'bias',
    ('batch_stats', 'mean'): 'running_mean',
    ('batch_stats', 'var'): 'running_var',
}


def _torch_name(path: tuple[str, ...]) -> str:
  return '.'.join(path[1:-1] + (_TORCH_LEAF[(path[0], path[-1])],))


def _to_flax(array: np.ndarray) -> np.ndarray:
  if array.ndim == 4:
    return np.transpose(array, (2, 3, 1, 0))  # OIHW -> HWIO
  return array.T if array.ndim == 2 else array


@functools.lru_cache(maxsize=None)
def _flax_shapes() -> dict[tuple[str, ...], tuple[int, ...]]:
  dummy = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.uint8)
  shapes = jax.eval_shape(InceptionV3().init, jax.random.key(0), dummy)
  return {k: v.shape for k, v in flax.traverse_util.flatten_dict(shapes).items()}


def expected_shapes() -> dict[str, tuple[int, ...]]:
  """Every PyTorch state-dict key `load_params` reads, with its PyTorch shape."""
  out = {}
  for path, shape in _flax_shapes().items():
    torch_shape = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape[::-1]
    out[_torch_name(path)] = tuple(torch_shape)
  return out


def _read_arrays(path: str) -> dict[str, np.ndarray]:
  if not path.endswith(('.npz', '.pth', '.pt')):
    raise ValueError(f'inception: weights file {path!r} is neither .pth nor .npz')
  if path.endswith('.npz'):
    try:
      f = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
      raise ValueError(f'inception: {path}: not a readable .npz ({type(e).__name__})') from None
    if not isinstance(f, np.lib.npyio.NpzFile):
      raise ValueError(f'inception: {path}: a single array, expected an .npz of named tensors')
    with f:
      return {k: f[k] for k in f.files}
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ImportError(f'inception: reading {path} needs torch (pip install var_jax[torch]), or '
                      'give the same tensors as an .npz') from None
  try:
    state = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except  # torch raises many types for bad files
    raise ValueError(f'inception: {path}: not a readable state dict ({type(e).__name__})') from None
  if not isinstance(state, dict):
    raise ValueError(f'inception: {path}: holds a {type(state).__name__}, expected a state dict')
  return {k: v.numpy() for k, v in state.items() if isinstance(v, torch.Tensor)}


def load_params(path: str) -> dict[str, Any]:
  """Reads torch-fidelity / pytorch-fid InceptionV3 weights into Flax variables (float32)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'inception: weights file {path!r} not found; download '
                            f'{TORCH_FIDELITY_URL} (torch-fidelity) or {PYTORCH_FID_URL} '
                            '(pytorch-fid), or give the same tensors as an .npz')
  arrays = _read_arrays(path)
  expected = expected_shapes()
  missing = [k for k in expected if k not in arrays]
  bad = [f'{k} {arrays[k].shape} (expected {s})' for k, s in expected.items()
         if k in arrays and tuple(arrays[k].shape) != s]
  if missing or bad:
    raise ValueError(f'inception: {path}: missing keys {missing[:4]}'
                     f'{" ..." if len(missing) > 4 else ""}; mis-shaped {bad[:4]}')
  flat = {p: _to_flax(arrays[_torch_name(p)]).astype(np.float32) for p in _flax_shapes()}
  return flax.traverse_util.unflatten_dict(flat)
