"""The Flax InceptionV3 against torch-fidelity's `FeatureExtractorInceptionV3` with random weights.

torch-fidelity (a dev dependency) is a pure-PyTorch port of the TF graph the ADM evaluator
runs. Its package `__init__` imports torchvision, which does not load with this torch, so
the test imports only the module files it needs: it puts a bare stand-in package
`torch_fidelity` (with the real `__path__`) into `sys.modules`, plus a stand-in for
`torch_fidelity.utils` (torchvision-bound; `metric_fid` only imports names from it), imports
`feature_extractor_inceptionv3`, `interpolate_compat_tensorflow` and `metric_fid`, and
removes the stand-ins again. Their FID is then their `fid_features_to_statistics` and
`fid_statistics_to_metric` (eigenvalue-based) on their extractor's features.
The weights are seeded random tensors with torch-fidelity's key names and shapes, saved as
a `.pth` and read by both sides (theirs strictly, so our key layout is checked too).
"""
import importlib
import importlib.util
import math
import sys
import types

import jax
import numpy as np
import pytest

from var_jax.eval import features, inception, metrics

torch = pytest.importorskip('torch', reason='torch is needed for the torch-fidelity reference')


_TF_MODULES = ('feature_extractor_inceptionv3', 'interpolate_compat_tensorflow', 'metric_fid')


def _import_torch_fidelity() -> types.SimpleNamespace:
  """torch-fidelity's module files named in `_TF_MODULES`, without the package `__init__`."""
  spec = importlib.util.find_spec('torch_fidelity')
  if spec is None:
    pytest.skip('torch-fidelity is not installed (pip install --no-deps torch-fidelity==0.4.0)')
  stubs = {'torch_fidelity': types.ModuleType('torch_fidelity'),
           'torch_fidelity.utils': types.ModuleType('torch_fidelity.utils')}
  stubs['torch_fidelity'].__path__ = list(spec.submodule_search_locations)
  stubs['torch_fidelity.utils'].__getattr__ = lambda name: None
  saved = {k: v for k, v in sys.modules.items() if k.split('.')[0] == 'torch_fidelity'}
  sys.modules.update(stubs)
  try:
    return types.SimpleNamespace(**{m: importlib.import_module(f'torch_fidelity.{m}')
                                    for m in _TF_MODULES})
  finally:
    for k in [k for k in sys.modules if k.split('.')[0] == 'torch_fidelity']:
      del sys.modules[k]
    sys.modules.update(saved)


def _random_state_dict(seed: int) -> dict:
  """He-scaled conv/fc weights and non-trivial batch-norm statistics, so features are O(1-10)."""
  g = torch.Generator().manual_seed(seed)
  state = {}
  for key, shape in inception.expected_shapes().items():
    if key.endswith('conv.weight') or key == 'fc.weight':
      state[key] = torch.randn(shape, generator=g) * math.sqrt(2.0 / math.prod(shape[1:]))
    elif key.endswith(('running_var', 'bn.weight')):
      state[key] = 0.5 + torch.rand(shape, generator=g)
    else:  # bn.bias, bn.running_mean
      state[key] = 0.2 * torch.randn(shape, generator=g)
  state['fc.bias'] = torch.randn(inception.NUM_CLASSES, generator=g)  # theirs has one; unused
  return state


@pytest.fixture(scope='module')
def tfid():
  return _import_torch_fidelity()


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
  path = tmp_path_factory.mktemp('inception') / 'weights-random.pth'
  torch.save(_random_state_dict(0), path)
  return str(path)


def _images(seed: int, n: int, smooth: bool) -> np.ndarray:
  """Small non-square uint8 images (the resize takes them to 299): noise, or smooth ramps."""
  rng = np.random.default_rng(seed)
  if not smooth:
    return rng.integers(0, 256, (n, 37, 53, 3), dtype=np.uint8)
  yy, xx = np.meshgrid(np.linspace(0, 1, 37), np.linspace(0, 1, 53), indexing='ij')
  coef = rng.uniform(-1, 1, (n, 1, 1, 3, 3))
  ramp = coef[..., 0] * yy[None, :, :, None] + coef[..., 1] * xx[None, :, :, None] + coef[..., 2]
  return np.clip(128 + 100 * ramp, 0, 255).astype(np.uint8)


@pytest.fixture(scope='module')
def both(tfid, weights):
  """Features and logits of 6 noise + 6 smooth images from torch-fidelity and from ours."""
  images = np.concatenate([_images(1, 6, smooth=False), _images(2, 6, smooth=True)])
  model = tfid.feature_extractor_inceptionv3.FeatureExtractorInceptionV3(
      'inception-v3-compat', ['2048', 'logits_unbiased'], feature_extractor_weights_path=weights)
  with torch.no_grad():
    theirs = model(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
  # Batch 5 over 12 images: two full batches and one padded one, one compilation.
  ours = features.get_extractor(f'inception:{weights}', batch_size=5)(images)
  return tuple(t.numpy() for t in theirs), ours


# The `both` fixture (one CPU compilation of the network, 12 images through each side) and
# the 2048-d sqrtm take tens of seconds on 2 cores.
@pytest.mark.slow
def test_features_and_logits_match_torch_fidelity(both):
  (want_feats, want_logits), (got_feats, got_logits) = both
  assert got_feats.shape == (12, inception.FEATURE_DIM)
  assert got_logits.shape == (12, inception.NUM_CLASSES)
  feat_err = np.max(np.abs(got_feats - want_feats))
  logit_err = np.max(np.abs(got_logits - want_logits))
  print(f'features: max |x| {np.abs(want_feats).max():.3g}, max err {feat_err:.2e}; '
        f'logits: max |x| {np.abs(want_logits).max():.3g}, max err {logit_err:.2e}')
  assert feat_err < 1e-4 and logit_err < 1e-4


@pytest.mark.slow
@pytest.mark.filterwarnings('ignore::scipy.linalg.LinAlgWarning')  # 6 samples: singular sigmas
def test_fid_matches_torch_fidelity(tfid, both):
  (want_feats, _), (got_feats, _) = both
  fid = tfid.metric_fid
  want = fid.fid_statistics_to_metric(
      fid.fid_features_to_statistics(torch.from_numpy(want_feats[:6])),
      fid.fid_features_to_statistics(torch.from_numpy(want_feats[6:])),
      verbose=False)[fid.KEY_METRIC_FID]
  got = metrics.frechet_distance(got_feats[:6], got_feats[6:])
  print(f'FID ours {got:.6g}, torch-fidelity {want:.6g}, relative {abs(got - want) / want:.2e}')
  assert want > 1.0  # the two sets differ, so agreement is not trivial
  assert abs(got - want) <= 0.01 * want


@pytest.mark.parametrize('size', [(37, 53), (299, 299), (512, 384), (5, 600)])
def test_resize_matches_torch_fidelity_tf1_bilinear(tfid, size):
  x = np.random.default_rng(3).uniform(0, 255, (2, *size, 3)).astype(np.float32)
  want = tfid.interpolate_compat_tensorflow.interpolate_bilinear_2d_like_tensorflow1x(
      torch.from_numpy(x).permute(0, 3, 1, 2), size=(299, 299), align_corners=False)
  got = inception.resize_bilinear_tf1(x, 299, 299)
  np.testing.assert_allclose(np.asarray(got), want.permute(0, 2, 3, 1).numpy(), rtol=0, atol=1e-4)


def test_npz_weights_load_like_the_pth(weights, tmp_path):
  state = torch.load(weights, weights_only=True)
  npz = tmp_path / 'weights.npz'
  np.savez(npz, **{k: v.numpy() for k, v in state.items()})
  a, b = inception.load_params(weights), inception.load_params(str(npz))
  assert jax.tree.structure(a) == jax.tree.structure(b)
  assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_bad_weights_files_give_one_line_errors(weights, tmp_path, monkeypatch):
  with pytest.raises(FileNotFoundError):
    inception.load_params(str(tmp_path / 'weights-inception-2015-12-05-6726825d.pth'))
  state = {k: v.numpy() for k, v in torch.load(weights, weights_only=True).items()}
  del state['Mixed_7c.branch_pool.conv.weight']
  state['fc.weight'] = state['fc.weight'][:1000]
  broken = tmp_path / 'broken.npz'
  np.savez(broken, **state)
  with pytest.raises(ValueError):
    inception.load_params(str(broken))
  junk = tmp_path / 'junk.pth'
  junk.write_bytes(b'not a torch file')
  with pytest.raises(ValueError):
    inception.load_params(str(junk))
  bare = tmp_path / 'bare.npz'
  with open(bare, 'wb') as f:
    np.save(f, np.zeros(3))  # a single .npy under an .npz name
  with pytest.raises(ValueError):
    inception.load_params(str(bare))
  monkeypatch.setitem(sys.modules, 'torch', None)  # as where torch is not installed
  with pytest.raises(ImportError):
    inception.load_params(weights)
