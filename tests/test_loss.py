"""VAR loss and metrics: official CE (fixture A), label smoothing as torch, weights, accuracies, errors."""
import numpy as np
import pytest

import jax.numpy as jnp

from var_jax.models.loss import var_loss

PN = (1, 2, 3)  # L = 14


def _tokens(expected):
  return np.concatenate([expected[k] for k in sorted(expected.files) if k.startswith('idx_')], axis=1)


@pytest.mark.parity
def test_ce_matches_official_fixture(fixture_a):
  e = np.load(fixture_a / 'expected.npz')
  idx_BL = _tokens(e)
  loss, metrics = var_loss(jnp.asarray(e['logits']), jnp.asarray(idx_BL), (1, 2, 3, 4))
  assert abs(float(loss) - float(e['ce_loss'])) <= 1e-4 * max(1.0, abs(float(e['ce_loss'])))
  assert float(metrics['loss']) == float(loss)


def test_label_smoothing_matches_torch():
  torch = pytest.importorskip('torch')
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 14, 7)).astype(np.float32) * 3
  idx = rng.integers(0, 7, size=(2, 14))
  want = torch.nn.functional.cross_entropy(torch.from_numpy(logits).reshape(-1, 7),
                                           torch.from_numpy(idx).reshape(-1), label_smoothing=0.1)
  loss, metrics = var_loss(jnp.asarray(logits), jnp.asarray(idx), PN, label_smoothing=0.1)
  np.testing.assert_allclose(float(loss), float(want), rtol=1e-5)
  plain = torch.nn.functional.cross_entropy(torch.from_numpy(logits[:, 5:]).reshape(-1, 7),
                                            torch.from_numpy(idx[:, 5:]).reshape(-1))
  # The last-scale metric is the unsmoothed CE, as the official trainer logs it.
  np.testing.assert_allclose(float(metrics['loss_last_scale']), float(plain), rtol=1e-5)


def test_weights_and_per_scale_metrics():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(3, 14, 5)).astype(np.float32)
  idx = rng.integers(0, 5, size=(3, 14))
  w = np.zeros(14, np.float32)
  w[1:5] = 0.25  # all weight on scale 1, averaged
  loss, m = var_loss(jnp.asarray(logits), jnp.asarray(idx), PN, weights_L=jnp.asarray(w))
  np.testing.assert_allclose(float(loss), float(m['loss_scale_1']), rtol=1e-6)
  _, m = var_loss(jnp.asarray(logits), jnp.asarray(idx), PN)
  np.testing.assert_allclose(np.mean([float(m[f'loss_scale_{k}']) * pn * pn for k, pn in enumerate(PN)]) * 3 / 14,
                             float(m['loss']), rtol=1e-5)


def test_accuracy():
  idx = np.zeros((2, 14), np.int64)
  logits = np.zeros((2, 14, 4), np.float32)
  logits[..., 1] = 1.0          # predicts 1 everywhere ...
  logits[0, 5:, 0] = 2.0        # ... except sample 0 on the last scale, which predicts 0 (right)
  _, m = var_loss(jnp.asarray(logits), jnp.asarray(idx), PN)
  assert float(m['acc']) == pytest.approx(9 / 28)
  assert float(m['acc_last_scale']) == pytest.approx(0.5)
  assert float(m['acc_scale_0']) == 0.0


def test_bad_shapes():
  logits = jnp.zeros((2, 13, 4))
  with pytest.raises(ValueError, match=r'\(B, 14, V\)'):
    var_loss(logits, jnp.zeros((2, 13), jnp.int32), PN)
  with pytest.raises(ValueError, match='token indices'):
    var_loss(jnp.zeros((2, 14, 4)), jnp.zeros((2, 15), jnp.int32), PN)
  with pytest.raises(ValueError, match='weights_L'):
    var_loss(jnp.zeros((2, 14, 4)), jnp.zeros((2, 14), jnp.int32), PN, weights_L=jnp.ones(3))
