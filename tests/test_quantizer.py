"""Multi-scale quantizer pieces: phi selection, code lookup, losses, validation."""
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from var_jax.models import quantizer


def _ticks_exact(n):
  margin = Fraction(1, 3 * n) if n == 4 else Fraction(1, 2 * n)
  return [margin + i * (1 - 2 * margin) / (n - 1) for i in range(n)]


def _phi_rule(k, num_scales, share):
  """The official tick rule restated in plain Python floats (first tick on ties).

  Exact ties are common (e.g. 10 scales, 4 phis, k = 2 and 7); the official code
  breaks them by float64 rounding of numpy's linspace, start + i * step with the last
  tick set to the stop, so this statement rounds the same way.
  """
  n = num_scales if share == 0 else share
  if n == 1:
    return 0
  margin = 1 / 3 / n if n == 4 else 1 / 2 / n
  step = ((1 - margin) - margin) / (n - 1)
  ticks = [margin + i * step for i in range(n - 1)] + [1 - margin]
  position = k / (num_scales - 1) if num_scales > 1 else 0.0
  distances = [abs(t - position) for t in ticks]
  return distances.index(min(distances))


def test_phi_index_follows_the_tick_rule():
  for num_scales in range(1, 17):
    for share in range(0, 7):
      got = [quantizer.phi_index(k, num_scales, share) for k in range(num_scales)]
      want = [_phi_rule(k, num_scales, share) for k in range(num_scales)]
      assert got == want, (num_scales, share)
      n = num_scales if share == 0 else share
      if n > 1 and num_scales > 1:
        # In exact arithmetic the chosen tick is (one of) the nearest.
        ticks = _ticks_exact(n)
        for k, i in enumerate(got):
          dist = [abs(t - Fraction(k, num_scales - 1)) for t in ticks]
          assert dist[i] == min(dist), (num_scales, share, k)


def test_phi_index_released_configuration():
  # 10 scales, 4 partially shared phis: ticks 1/12, 13/36, 23/36, 11/12; scales 2 and 7
  # sit exactly between two ticks and the official float rounding picks the later one.
  assert [quantizer.phi_index(k, 10, 4) for k in range(10)] == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
  assert [quantizer.phi_index(k, 10, 1) for k in range(10)] == [0] * 10
  assert [quantizer.phi_index(k, 10, 0) for k in range(10)] == list(range(10))


def test_phi_index_rejects_bad_arguments():
  with pytest.raises(ValueError, match='scale index k=3'):
    quantizer.phi_index(3, 3, 4)
  with pytest.raises(ValueError, match='share_quant_resi must be >= 0'):
    quantizer.phi_index(0, 3, -1)


@pytest.mark.parametrize('bad', [(1, 2, 2, 4), (2, 1), (0, 1, 2), ()])
def test_patch_nums_must_increase(bad):
  with pytest.raises(ValueError, match='patch_nums must be positive and strictly increasing'):
    quantizer.check_patch_nums(bad)


def test_nearest_code_squared_l2_and_cosine():
  rng = np.random.RandomState(0)
  z = rng.randn(64, 8).astype(np.float32)
  codes = rng.randn(32, 8).astype(np.float32) * rng.uniform(0.1, 3, (32, 1)).astype(np.float32)
  l2 = ((z[:, None, :].astype(np.float64) - codes[None]) ** 2).sum(-1).argmin(1)
  np.testing.assert_array_equal(quantizer.nearest_code(jnp.asarray(z), jnp.asarray(codes), False),
                                l2)
  cos = (z @ (codes / np.linalg.norm(codes, axis=1, keepdims=True)).T).argmax(1)
  got_cos = quantizer.nearest_code(jnp.asarray(z), jnp.asarray(codes), True)
  np.testing.assert_array_equal(got_cos, cos)
  # Code norms vary, so the two criteria disagree somewhere: the flag matters.
  assert (l2 != cos).any()


def _identity_phi(k, h):
  del k
  return h


def test_residual_quantize_recovers_codes_exactly_representable():
  # One scale at full resolution and a feature built from codes: exact recovery.
  rng = np.random.RandomState(1)
  codes = jnp.asarray(rng.randn(16, 4).astype(np.float32))
  idx = rng.randint(0, 16, (2, 9))
  f = codes[idx].reshape(2, 3, 3, 4)
  idx_list, fhat_list = quantizer.residual_quantize(f, codes, _identity_phi, (3,), False)
  np.testing.assert_array_equal(idx_list[0], idx)
  np.testing.assert_array_equal(fhat_list[0], f)


def test_vq_loss_value_and_gradients():
  rng = np.random.RandomState(2)
  f = jnp.asarray(rng.randn(2, 4, 4, 3).astype(np.float32))
  fhats = [jnp.asarray(rng.randn(2, 4, 4, 3).astype(np.float32)) for _ in range(3)]
  beta = 0.25
  want = np.mean([(1 + beta) * np.mean((np.asarray(fh) - np.asarray(f)) ** 2) for fh in fhats])
  np.testing.assert_allclose(quantizer.vq_loss(f, fhats, beta), want, rtol=1e-6)
  g_f, g_fh = jax.grad(quantizer.vq_loss, argnums=(0, 1))(f, fhats, beta)
  n = f.size
  # Commitment pulls f toward every sg(f_hat_k) with weight beta; codebook side has weight 1.
  np.testing.assert_allclose(g_f, np.mean([2 * beta * (f - fh) / n for fh in fhats], 0),
                             rtol=1e-5, atol=1e-8)
  np.testing.assert_allclose(g_fh[0], 2 * (fhats[0] - f) / n / 3, rtol=1e-5, atol=1e-8)


def test_straight_through_forward_value_identity_gradient():
  f = jnp.arange(6.0).reshape(1, 1, 2, 3)
  f_hat = jnp.ones_like(f)
  np.testing.assert_array_equal(quantizer.straight_through(f, f_hat), f_hat)
  g = jax.grad(lambda x: jnp.sum(quantizer.straight_through(x, f_hat) * f))(f)
  np.testing.assert_array_equal(g, f)


def test_index_maps_are_validated():
  codes = jnp.zeros((4, 2))
  with pytest.raises(ValueError, match='expected 3 index maps'):
    quantizer.idx_to_fhat([jnp.zeros((1, 1), jnp.int32)], codes, _identity_phi, (1, 2, 3))
  with pytest.raises(ValueError, match=r'index map 1 must have shape \(B, 4\)'):
    quantizer.idx_to_fhat([jnp.zeros((1, 1), jnp.int32)] * 3, codes, _identity_phi, (1, 2, 3))
