"""Multi-scale residual vector quantizer (VAR), as pure functions over `patch_nums`.

A latent f_BhwC (h = w = patch_nums[-1]) is quantized coarse to fine: at scale k the
residual is area-downsampled to pn_k x pn_k, each position takes its nearest code,
the code map is bicubic-upsampled back to h x w, passed through a phi convolution and
added to the accumulated f_hat. The Python loops below run at trace time only: every
scale is unrolled into the compiled graph.

`phi` arguments are callables `phi(k, h_BhwC) -> h_BhwC` that apply the phi chosen for
scale k (see `phi_index`); the Linen module owning the weights provides it.
"""
from typing import Callable, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from var_jax import errors
from var_jax.models import resize

PhiFn = Callable[[int, jax.Array], jax.Array]

_HIGHEST = jax.lax.Precision.HIGHEST


def num_phis(num_scales: int, share_quant_resi: int) -> int:
  """How many phi convolutions exist: K when unshared (0), else `share_quant_resi`."""
  if share_quant_resi < 0:
    raise errors.ConfigError(f'share_quant_resi must be >= 0, got {share_quant_resi}')
  return num_scales if share_quant_resi == 0 else share_quant_resi


def phi_index(k: int, num_scales: int, share_quant_resi: int) -> int:
  """Index of the phi applied after scale k (0-based) of `num_scales` scales.

  The official rule: scale k sits at position k / (K - 1) in [0, 1]; it uses the phi
  whose tick is nearest (the first on ties). With n phis the ticks are
  linspace(1/(3n), 1 - 1/(3n), n) when n == 4 and linspace(1/(2n), 1 - 1/(2n), n)
  otherwise. A single scale (K = 1, where the official code divides by zero) sits at 0.
  """
  if not 0 <= k < num_scales:
    raise errors.ConfigError(f'scale index k={k} is outside [0, {num_scales})')
  n = num_phis(num_scales, share_quant_resi)
  if n == 1:
    return 0
  # Same float64 numpy arithmetic as the official code, so ties resolve identically.
  margin = 1 / 3 / n if n == 4 else 1 / 2 / n
  ticks = np.linspace(margin, 1 - margin, n)
  position = k / (num_scales - 1) if num_scales > 1 else 0.0
  return int(np.argmin(np.abs(ticks - position)))


def check_patch_nums(patch_nums: Sequence[int]) -> Tuple[int, ...]:
  """Returns patch_nums as a tuple of ints, or raises if not positive strictly increasing."""
  pns = tuple(int(p) for p in patch_nums)
  if not pns or pns[0] < 1 or any(b <= a for a, b in zip(pns, pns[1:])):
    raise errors.ConfigError(
        f'patch_nums must be positive and strictly increasing, got {tuple(patch_nums)}')
  return pns


def embed(codebook_VC: jax.Array, idx_Bl: jax.Array) -> jax.Array:
  """Codebook lookup: (B, l) int -> (B, l, C)."""
  return jnp.take(codebook_VC, idx_Bl, axis=0)


def nearest_code(z_NC: jax.Array, codebook_VC: jax.Array, using_znorm: bool) -> jax.Array:
  """Index (N,) int32 of the nearest code: squared L2, or cosine when using_znorm."""
  if using_znorm:
    z_NC = _l2_normalize(z_NC)
    sim_NV = jnp.matmul(z_NC, _l2_normalize(codebook_VC).T, precision=_HIGHEST)
    return jnp.argmax(sim_NV, axis=-1).astype(jnp.int32)
  # |z|^2 + |e|^2 - 2 z.e, summed in this order like the official code, so near-ties
  # between codes round the same way.
  d_NV = (jnp.sum(jnp.square(z_NC), axis=1, keepdims=True)
          + jnp.sum(jnp.square(codebook_VC), axis=1))
  d_NV = d_NV - 2 * jnp.matmul(z_NC, codebook_VC.T, precision=_HIGHEST)
  return jnp.argmin(d_NV, axis=-1).astype(jnp.int32)


def _l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  # torch F.normalize: x / max(|x|, eps).
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def _latent_size(patch_nums: Sequence[int]) -> Tuple[int, int]:
  return patch_nums[-1], patch_nums[-1]


def _upsample_phi(k: int, h_BpnC: jax.Array, patch_nums: Sequence[int],
                  phi: PhiFn) -> jax.Array:
  """Scale k's code map (B, pn, pn, C) -> its contribution to f_hat (B, h, w, C)."""
  return phi(k, resize.bicubic_resize(h_BpnC, _latent_size(patch_nums)))


def residual_quantize(
    f_BhwC: jax.Array, codebook_VC: jax.Array, phi: PhiFn, patch_nums: Sequence[int],
    using_znorm: bool) -> Tuple[List[jax.Array], List[jax.Array]]:
  """Quantizes f coarse to fine.

  Args:
    f_BhwC: latent, h = w = patch_nums[-1]. Gradients do not flow into it.
    codebook_VC: the code vectors.
    phi: phi(k, h_BhwC) for scale k.
    patch_nums: side of every scale's token map, strictly increasing.
    using_znorm: cosine instead of squared-L2 nearest code.

  Returns:
    (idx list of (B, pn_k^2) int32, f_hat list of (B, h, w, C) accumulated after scale k).
    f_hat is differentiable w.r.t. the codebook and phi weights.
  """
  batch, h, w, c = f_BhwC.shape
  if (h, w) != _latent_size(patch_nums):
    raise errors.ConfigError(f'latent is {h}x{w} but patch_nums[-1] is {patch_nums[-1]}')
  f_rest = jax.lax.stop_gradient(f_BhwC)
  f_hat = jnp.zeros_like(f_rest)
  idx_list, fhat_list = [], []
  for k, pn in enumerate(patch_nums):
    z_BpnC = resize.area_resize(f_rest, (pn, pn))
    idx_Bl = nearest_code(z_BpnC.reshape(-1, c), jax.lax.stop_gradient(codebook_VC),
                          using_znorm).reshape(batch, pn * pn)
    h_BhwC = _upsample_phi(k, embed(codebook_VC, idx_Bl).reshape(batch, pn, pn, c),
                           patch_nums, phi)
    f_hat = f_hat + h_BhwC
    f_rest = f_rest - h_BhwC
    idx_list.append(idx_Bl)
    fhat_list.append(f_hat)
  return idx_list, fhat_list


def _check_idx_list(idx_list: Sequence[jax.Array], patch_nums: Sequence[int],
                    expected_scales: int) -> None:
  if len(idx_list) != expected_scales:
    raise errors.ConfigError(f'expected {expected_scales} index maps (one per scale of '
                     f'patch_nums={tuple(patch_nums)}), got {len(idx_list)}')
  for k, idx_Bl in enumerate(idx_list):
    if idx_Bl.ndim != 2 or idx_Bl.shape[1] != patch_nums[k] ** 2:
      raise errors.ConfigError(f'index map {k} must have shape (B, {patch_nums[k] ** 2}), '
                       f'got {tuple(idx_Bl.shape)}')


def ar_step(k: int, f_hat_BhwC: jax.Array, h_BpnC: jax.Array, patch_nums: Sequence[int],
            phi: PhiFn) -> Tuple[jax.Array, Optional[jax.Array]]:
  """Adds scale k's code embeddings (B, pn_k, pn_k, C) to f_hat.

  Returns the new f_hat and its area-downsampled map at scale k+1 (the transformer's
  next input), or None after the last scale.
  """
  f_hat_BhwC = f_hat_BhwC + _upsample_phi(k, h_BpnC, patch_nums, phi)
  if k == len(patch_nums) - 1:
    return f_hat_BhwC, None
  pn_next = patch_nums[k + 1]
  return f_hat_BhwC, resize.area_resize(f_hat_BhwC, (pn_next, pn_next))


def _embed_maps(codebook_VC, idx_list, patch_nums):
  return [embed(codebook_VC, idx_Bl).reshape(idx_Bl.shape[0], pn, pn, -1)
          for idx_Bl, pn in zip(idx_list, patch_nums)]


def idx_to_fhat(idx_list: Sequence[jax.Array], codebook_VC: jax.Array, phi: PhiFn,
                patch_nums: Sequence[int]) -> List[jax.Array]:
  """Token maps of every scale -> f_hat (B, h, w, C) accumulated after each scale."""
  _check_idx_list(idx_list, patch_nums, len(patch_nums))
  h_list = _embed_maps(codebook_VC, idx_list, patch_nums)
  f_hat = jnp.zeros(h_list[0].shape[:1] + _latent_size(patch_nums) + h_list[0].shape[-1:],
                    codebook_VC.dtype)
  fhat_list = []
  for k, h_BpnC in enumerate(h_list):
    f_hat, _ = ar_step(k, f_hat, h_BpnC, patch_nums, phi)
    fhat_list.append(f_hat)
  return fhat_list


def idx_to_var_input(idx_list: Sequence[jax.Array], codebook_VC: jax.Array, phi: PhiFn,
                     patch_nums: Sequence[int]) -> jax.Array:
  """Teacher-forcing input (B, sum(pn^2) - pn_1^2, C): for k = 1..K-1, f_hat after
  scales < k, area-downsampled to pn_k. Takes all K index maps (the last is unused)
  or the first K-1."""
  num_inputs = len(patch_nums) - 1
  if num_inputs < 1:
    raise errors.ConfigError('idx_to_var_input needs at least two scales in patch_nums')
  if len(idx_list) not in (num_inputs, num_inputs + 1):
    raise errors.ConfigError(f'expected {num_inputs} or {num_inputs + 1} index maps for '
                     f'patch_nums={tuple(patch_nums)}, got {len(idx_list)}')
  idx_list = list(idx_list)[:num_inputs]
  _check_idx_list(idx_list, patch_nums, num_inputs)
  batch = idx_list[0].shape[0]
  h_list = _embed_maps(codebook_VC, idx_list, patch_nums)
  f_hat = jnp.zeros((batch,) + _latent_size(patch_nums) + (codebook_VC.shape[-1],),
                    codebook_VC.dtype)
  inputs = []
  for k, h_BpnC in enumerate(h_list):
    f_hat, next_BpnC = ar_step(k, f_hat, h_BpnC, patch_nums, phi)
    inputs.append(next_BpnC.reshape(batch, -1, next_BpnC.shape[-1]))
  return jnp.concatenate(inputs, axis=1)


def vq_loss(f_BhwC: jax.Array, fhat_list: Sequence[jax.Array], beta: float) -> jax.Array:
  """Mean over scales of beta * mse(sg(f_hat_k), f) + mse(f_hat_k, sg(f))."""
  sg = jax.lax.stop_gradient
  per_scale = [beta * jnp.mean(jnp.square(sg(f_hat) - f_BhwC))
               + jnp.mean(jnp.square(f_hat - sg(f_BhwC))) for f_hat in fhat_list]
  return sum(per_scale) / len(per_scale)


def straight_through(f_BhwC: jax.Array, f_hat_BhwC: jax.Array) -> jax.Array:
  """f_hat in the forward pass, identity gradient to f in the backward pass."""
  return f_BhwC + jax.lax.stop_gradient(f_hat_BhwC - f_BhwC)
