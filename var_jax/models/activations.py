"""Activations with a hand-written backward pass where autodiff's costs time.

`gelu_tanh` is `jax.nn.gelu(x, approximate=True)` (torch `GELU(approximate='tanh')`, the official FFN's)
with the same forward expression. Its backward saves only the input and recomputes tanh in the one
elementwise pass that forms the gradient; autodiff instead keeps the intermediate products of the
forward pass and reads them back in a chain of passes over the (B, L, 4C) activation.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_CUBIC = 0.044715


def _inner(x):
  """sqrt(2/pi) (x + 0.044715 x³), as jax.nn.gelu computes it."""
  return np.sqrt(2 / np.pi).astype(x.dtype) * (x + _CUBIC * (x ** 3))


@jax.custom_vjp
def gelu_tanh(x):
  """x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x³)))."""
  return x * (0.5 * (1.0 + jnp.tanh(_inner(x))))


def _gelu_fwd(x):
  return gelu_tanh(x), x


def _gelu_bwd(x, g):
  t = jnp.tanh(_inner(x))
  du_dx = np.sqrt(2 / np.pi).astype(x.dtype) * (1.0 + 3 * _CUBIC * x * x)
  return (g * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du_dx),)


gelu_tanh.defvjp(_gelu_fwd, _gelu_bwd)
