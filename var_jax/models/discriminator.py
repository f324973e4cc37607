"""PatchGAN discriminator and hinge losses for adversarial tokenizer training (VQGAN recipe).

The layout follows taming-transformers' `NLayerDiscriminator` (4x4 convolutions, stride 2 while
the width doubles, LeakyReLU 0.2, N(0, 0.02) init, one logit per overlapping patch) with one
deliberate change: GroupNorm instead of BatchNorm. BatchNorm would need mutable batch statistics
that differ between meshes and make exact resume depend on batch order; GroupNorm is per-sample,
so the discriminator, like the rest of the step, is a pure function of params and batch.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from var_jax import errors


class PatchDiscriminator(nn.Module):
  """Images [B, H, W, 3] in [-1, 1] -> patch logits [B, h, w, 1] (h = H / 2**n_layers - 2)."""
  ch: int = 64
  n_layers: int = 3
  norm_groups: int = 32

  @nn.compact
  def __call__(self, img_BHWC: jax.Array) -> jax.Array:
    if self.ch % self.norm_groups:
      raise errors.ConfigError(f'discriminator: ch={self.ch} is not divisible by norm_groups={self.norm_groups}')
    init = nn.initializers.normal(0.02)
    pad = ((1, 1), (1, 1))
    x = nn.Conv(self.ch, (4, 4), strides=2, padding=pad, kernel_init=init, name='conv_in')(img_BHWC)
    x = nn.leaky_relu(x, 0.2)
    for i in range(1, self.n_layers + 1):
      width = self.ch * min(2**i, 8)
      stride = 2 if i < self.n_layers else 1
      x = nn.Conv(width, (4, 4), strides=stride, padding=pad, use_bias=False, kernel_init=init,
                  name=f'conv_{i}')(x)
      x = nn.GroupNorm(num_groups=self.norm_groups, epsilon=1e-5, name=f'norm_{i}')(x)
      x = nn.leaky_relu(x, 0.2)
    return nn.Conv(1, (4, 4), padding=pad, kernel_init=init, name='conv_out')(x)


def hinge_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
  """Discriminator hinge loss: 0.5 * (E[relu(1 - D(x))] + E[relu(1 + D(G(z)))])."""
  return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real)) + jnp.mean(jax.nn.relu(1.0 + logits_fake)))


def hinge_g_loss(logits_fake: jax.Array) -> jax.Array:
  """Generator side of the hinge GAN: -E[D(G(z))]."""
  return -jnp.mean(logits_fake)


def adaptive_weight(grad_rec: jax.Array, grad_gan: jax.Array, max_weight: float = 1e4) -> jax.Array:
  """VQGAN's balance ||dL_rec/dW|| / (||dL_gan/dW|| + 1e-4) at the decoder's last layer W.

  The result is a constant for the outer gradient (stop_gradient), as in taming-transformers.
  """
  w = jnp.linalg.norm(grad_rec) / (jnp.linalg.norm(grad_gan) + 1e-4)
  return jax.lax.stop_gradient(jnp.clip(w, 0.0, max_weight))
