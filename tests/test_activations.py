"""The hand-written GELU backward equals autodiff of jax.nn.gelu(approximate=True)."""
import jax
import jax.numpy as jnp
import numpy as np

from var_jax.models import activations


def _inputs(dtype):
  x = np.linspace(-6.0, 6.0, 4001).astype(np.float32)  # both tails and the knee
  return jnp.asarray(x, dtype)


def test_gelu_tanh_forward_is_jax_gelu_tanh():
  x = _inputs(jnp.float32)
  np.testing.assert_array_equal(activations.gelu_tanh(x), jax.nn.gelu(x, approximate=True))


def test_gelu_tanh_gradient_matches_autodiff_in_float32_and_bfloat16():
  for dtype, tol in ((jnp.float32, 1e-6), (jnp.bfloat16, 2e-2)):
    x = _inputs(dtype)
    g = jnp.cos(x.astype(jnp.float32)).astype(dtype)  # a non-constant cotangent
    _, ours = jax.vjp(activations.gelu_tanh, x)
    _, ref = jax.vjp(lambda v: jax.nn.gelu(v, approximate=True), x)
    np.testing.assert_allclose(np.asarray(ours(g)[0], np.float32), np.asarray(ref(g)[0], np.float32),
                               atol=tol, rtol=tol)
