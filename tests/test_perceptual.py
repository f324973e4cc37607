"""The perceptual distance reads a user's .npz, matches a PyTorch LPIPS-VGG reference, and fails clearly."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from var_jax.models import perceptual


@pytest.fixture(scope='module')
def weights_file(tmp_path_factory):
  """Random VGG16 + LPIPS-head weights under the PyTorch key names (He-scaled so features live)."""
  rng = np.random.default_rng(0)
  arrays = {}
  for key, shape in perceptual.expected_shapes().items():
    if key.endswith('bias'):
      arrays[key] = rng.normal(0, 0.05, shape).astype(np.float32)
    elif key.startswith('lin'):
      arrays[key] = rng.uniform(0, 0.1, shape).astype(np.float32)
    else:
      arrays[key] = rng.normal(0, np.sqrt(2 / (9 * shape[1])), shape).astype(np.float32)
  path = tmp_path_factory.mktemp('lpips') / 'vgg_lpips.npz'
  np.savez(path, **arrays)
  return path, arrays


def _torch_lpips(arrays, a, b):
  """Independent reference: LPIPS's VGG path written with torch.nn.functional on NCHW tensors."""
  torch = pytest.importorskip('torch')
  F = torch.nn.functional
  shift = torch.tensor([-.030, -.088, -.188]).view(1, 3, 1, 1)
  scale = torch.tensor([.458, .448, .450]).view(1, 3, 1, 1)
  slices = ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))

  def feats(x):
    x = (torch.from_numpy(x).permute(0, 3, 1, 2) - shift) / scale
    out = []
    for k, idxs in enumerate(slices):
      if k:
        x = F.max_pool2d(x, 2, 2)
      for i in idxs:
        x = F.relu(F.conv2d(x, torch.from_numpy(arrays[f'features.{i}.weight']),
                            torch.from_numpy(arrays[f'features.{i}.bias']), padding=1))
      out.append(x)
    return out

  total = 0
  for k, (x, y) in enumerate(zip(feats(a), feats(b))):
    x = x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
    y = y / (y.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
    d = F.conv2d((x - y) ** 2, torch.from_numpy(arrays[f'lin{k}.model.1.weight']))
    total = total + d.mean(dim=(2, 3))
  return total[:, 0].numpy()


def test_matches_torch_reference(weights_file):
  path, arrays = weights_file
  params = perceptual.load_params(str(path))
  rng = np.random.default_rng(1)
  a = rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
  b = np.clip(a + rng.normal(0, 0.3, a.shape), -1, 1).astype(np.float32)
  lpips = jax.jit(perceptual.lpips)
  got = np.asarray(lpips(params, a, b))
  np.testing.assert_allclose(got, _torch_lpips(arrays, a, b), rtol=1e-4, atol=1e-6)
  assert np.all(got > 0)
  np.testing.assert_allclose(np.asarray(lpips(params, a, a)), 0.0, atol=1e-6)


def test_gradient_is_finite(weights_file):
  params = perceptual.load_params(str(weights_file[0]))
  a = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, (1, 16, 16, 3)), jnp.float32)
  grad_fn = jax.jit(jax.grad(lambda x, p: perceptual.lpips(p, x, x * 0.5).sum()))
  g = grad_fn(a, params)
  assert np.all(np.isfinite(np.asarray(g))) and np.abs(np.asarray(g)).sum() > 0


def test_without_lin_heads_weights_channels_equally(weights_file, tmp_path):
  _, arrays = weights_file
  path = tmp_path / 'vgg_only.npz'
  np.savez(path, **{k: v for k, v in arrays.items() if not k.startswith('lin')})
  lins = perceptual.load_params(str(path))['lins']
  assert [l.shape[0] for l in lins] == [64, 128, 256, 512, 512]
  np.testing.assert_allclose([l.sum() for l in lins], 1.0, rtol=1e-6)


def test_bad_files_are_rejected(weights_file, tmp_path):
  _, arrays = weights_file
  with pytest.raises(FileNotFoundError, match='not found'):
    perceptual.load_params(str(tmp_path / 'nope.npz'))
  broken = dict(arrays)
  del broken['features.0.weight']
  broken['features.2.bias'] = np.zeros((3,), np.float32)
  np.savez(tmp_path / 'broken.npz', **broken)
  with pytest.raises(ValueError, match=r"missing keys \['features.0.weight'\].*features.2.bias"):
    perceptual.load_params(str(tmp_path / 'broken.npz'))
