"""VAR's multi-scale VQVAE tokenizer in Flax Linen (NHWC inside).

Layout as the official model: a convolutional encoder that halves the resolution
len(ch_mult) - 1 times, a 3x3 `quant_conv`, the multi-scale residual quantizer
(`var_jax.models.quantizer`) with its phi convolutions, a 3x3 `post_quant_conv` and a
decoder with one more res-block per level than the encoder. Module names are chosen
so that `var_jax.convert` maps them to the official state-dict keys mechanically.
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from var_jax import errors
from var_jax.models import quantizer

_PAD1 = ((1, 1), (1, 1))


def _norm(groups: int, name: Optional[str] = None) -> nn.GroupNorm:
  # Two-pass variance: the one-pass E[x^2] - E[x]^2 drifts from torch's GroupNorm.
  return nn.GroupNorm(num_groups=groups, epsilon=1e-6, use_fast_variance=False, name=name)


def _conv3(features: int, name: Optional[str] = None) -> nn.Conv:
  return nn.Conv(features, (3, 3), padding=_PAD1, name=name)


class ResnetBlock(nn.Module):
  """GroupNorm-SiLU-conv twice, with a 1x1 `nin_shortcut` when channels change."""
  features: int
  norm_groups: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, train: bool = False) -> jax.Array:
    h = _conv3(self.features, 'conv1')(nn.silu(_norm(self.norm_groups, 'norm1')(x_BHWC)))
    h = nn.silu(_norm(self.norm_groups, 'norm2')(h))
    if self.dropout > 1e-6:
      h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = _conv3(self.features, 'conv2')(h)
    if x_BHWC.shape[-1] != self.features:
      x_BHWC = nn.Conv(self.features, (1, 1), name='nin_shortcut')(x_BHWC)
    return x_BHWC + h


class AttnBlock(nn.Module):
  """Single-head self-attention over all positions, with a residual."""
  norm_groups: int

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    b, hh, ww, c = x_BHWC.shape
    qkv = nn.Conv(3 * c, (1, 1), name='qkv')(_norm(self.norm_groups, 'norm')(x_BHWC))
    q_BLC, k_BLC, v_BLC = jnp.split(qkv.reshape(b, hh * ww, 3 * c), 3, axis=-1)
    w_BLL = jax.nn.softmax(jnp.einsum('bqc,bkc->bqk', q_BLC, k_BLC) * c ** -0.5, axis=-1)
    h_BLC = jnp.einsum('bqk,bkc->bqc', w_BLL, v_BLC)
    return x_BHWC + nn.Conv(c, (1, 1), name='proj_out')(h_BLC.reshape(b, hh, ww, c))


class Downsample(nn.Module):
  """Pad right/bottom by one, then a 3x3 stride-2 conv (the official asymmetric scheme)."""

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    conv = nn.Conv(x_BHWC.shape[-1], (3, 3), strides=(2, 2), padding=((0, 1), (0, 1)),
                   name='conv')
    return conv(x_BHWC)


class Upsample(nn.Module):
  """Nearest-neighbour 2x, then a 3x3 conv."""

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    x_BHWC = jnp.repeat(jnp.repeat(x_BHWC, 2, axis=1), 2, axis=2)
    return _conv3(x_BHWC.shape[-1], 'conv')(x_BHWC)


class _Mid(nn.Module):
  """Res-block, attention, res-block at the lowest resolution (`mid_*` names)."""
  norm_groups: int
  dropout: float

  @nn.compact
  def __call__(self, h: jax.Array, train: bool) -> jax.Array:
    c = h.shape[-1]
    h = ResnetBlock(c, self.norm_groups, self.dropout, name='block_1')(h, train)
    h = AttnBlock(self.norm_groups, name='attn_1')(h)
    return ResnetBlock(c, self.norm_groups, self.dropout, name='block_2')(h, train)


class Encoder(nn.Module):
  """Image (B, H, W, 3) -> latent (B, H/2^(L-1), W/2^(L-1), z_channels), L = len(ch_mult)."""
  ch: int
  ch_mult: Sequence[int]
  num_res_blocks: int
  z_channels: int
  norm_groups: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, img_BHWC: jax.Array, train: bool = False) -> jax.Array:
    levels = len(self.ch_mult)
    h = _conv3(self.ch, 'conv_in')(img_BHWC)
    for i, mult in enumerate(self.ch_mult):
      for j in range(self.num_res_blocks):
        h = ResnetBlock(self.ch * mult, self.norm_groups, self.dropout,
                        name=f'down_{i}_block_{j}')(h, train)
        if i == levels - 1:
          h = AttnBlock(self.norm_groups, name=f'down_{i}_attn_{j}')(h)
      if i != levels - 1:
        h = Downsample(name=f'down_{i}_downsample')(h)
    h = _Mid(self.norm_groups, self.dropout, name='mid')(h, train)
    h = nn.silu(_norm(self.norm_groups, 'norm_out')(h))
    return _conv3(self.z_channels, 'conv_out')(h)


class Decoder(nn.Module):
  """Latent (B, h, w, z_channels) -> image (B, h*2^(L-1), w*2^(L-1), 3), unclamped."""
  ch: int
  ch_mult: Sequence[int]
  num_res_blocks: int
  norm_groups: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, z_BhwC: jax.Array, train: bool = False) -> jax.Array:
    levels = len(self.ch_mult)
    h = _conv3(self.ch * self.ch_mult[-1], 'conv_in')(z_BhwC)
    h = _Mid(self.norm_groups, self.dropout, name='mid')(h, train)
    for i in reversed(range(levels)):
      # One more res-block per level than the encoder, as in the official decoder.
      for j in range(self.num_res_blocks + 1):
        h = ResnetBlock(self.ch * self.ch_mult[i], self.norm_groups, self.dropout,
                        name=f'up_{i}_block_{j}')(h, train)
        if i == levels - 1:
          h = AttnBlock(self.norm_groups, name=f'up_{i}_attn_{j}')(h)
      if i != 0:
        h = Upsample(name=f'up_{i}_upsample')(h)
    h = nn.silu(_norm(self.norm_groups, 'norm_out')(h))
    return _conv3(3, 'conv_out')(h)


class Quantize(nn.Module):
  """Parameters of the quantizer: the codebook and the phi convolutions."""
  vocab_size: int
  z_channels: int
  quant_resi: float
  share_quant_resi: int
  num_scales: int

  def setup(self):
    self.embedding = nn.Embed(self.vocab_size, self.z_channels,
                              embedding_init=nn.initializers.normal(1.0))
    count = quantizer.num_phis(self.num_scales, self.share_quant_resi)
    # |quant_resi| ~ 0 makes every phi the identity, with no weights (as official).
    self.phis = [_conv3(self.z_channels) for _ in range(count if self.has_phi else 0)]

  @property
  def has_phi(self) -> bool:
    return abs(self.quant_resi) > 1e-6

  @property
  def codebook_VC(self) -> jax.Array:
    return self.embedding.embedding

  def phi(self, k: int, h_BhwC: jax.Array) -> jax.Array:
    """phi_k(h) = (1 - r) h + r conv(h), with the conv chosen by the tick rule."""
    if not self.has_phi:
      return h_BhwC
    conv = self.phis[quantizer.phi_index(k, self.num_scales, self.share_quant_resi)]
    r = abs(self.quant_resi)
    return h_BhwC * (1 - r) + conv(h_BhwC) * r

  def __call__(self, h_BhwC: jax.Array) -> jax.Array:
    # Only used by `init`, to create every phi.
    for conv in self.phis:
      h_BhwC = conv(h_BhwC)
    return h_BhwC


def image_size(patch_nums: Sequence[int], ch_mult: Sequence[int]) -> int:
  """Side of the images a tokenizer maps onto its last scale: pn_last x 2^(downsamplings)."""
  return quantizer.check_patch_nums(patch_nums)[-1] * 2 ** (len(ch_mult) - 1)


class VQVAE(nn.Module):
  """The multi-scale VQVAE. Images are NHWC float32 in [-1, 1]."""
  vocab_size: int = 4096
  z_channels: int = 32
  ch: int = 160
  ch_mult: Sequence[int] = (1, 1, 2, 2, 4)
  num_res_blocks: int = 2
  norm_groups: int = 32
  dropout: float = 0.0
  beta: float = 0.25
  using_znorm: bool = False
  quant_resi: float = 0.5
  share_quant_resi: int = 4
  patch_nums: Sequence[int] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)

  def setup(self):
    self.pns = quantizer.check_patch_nums(self.patch_nums)
    quantizer.num_phis(len(self.pns), self.share_quant_resi)  # validates the sharing
    self.encoder = Encoder(self.ch, tuple(self.ch_mult), self.num_res_blocks,
                           self.z_channels, self.norm_groups, self.dropout)
    self.decoder = Decoder(self.ch, tuple(self.ch_mult), self.num_res_blocks,
                           self.norm_groups, self.dropout)
    self.quant_conv = _conv3(self.z_channels)
    self.post_quant_conv = _conv3(self.z_channels)
    self.quantize = Quantize(self.vocab_size, self.z_channels, self.quant_resi,
                             self.share_quant_resi, len(self.pns))

  @property
  def image_size(self) -> int:
    """Side of the images this configuration encodes."""
    return image_size(self.patch_nums, self.ch_mult)

  def _check_image(self, img_BHWC: jax.Array) -> None:
    size = self.image_size
    if img_BHWC.ndim != 4 or tuple(img_BHWC.shape[1:]) != (size, size, 3):
      raise errors.ConfigError(
          f'image batch must be (B, {size}, {size}, 3) for patch_nums[-1]={self.pns[-1]} '
          f'and {len(self.ch_mult)} ch_mult levels, got {tuple(img_BHWC.shape)}')

  def encode(self, img_BHWC: jax.Array, train: bool = False) -> jax.Array:
    """(B, H, W, 3) -> f_BhwC, the latent after quant_conv."""
    self._check_image(img_BHWC)
    return self.quant_conv(self.encoder(img_BHWC, train))

  def residual_quantize(self, f_BhwC: jax.Array) -> Tuple[List[jax.Array], List[jax.Array]]:
    """Latent -> (idx list (B, pn_k^2), f_hat list (B, h, w, C) after each scale)."""
    return quantizer.residual_quantize(f_BhwC, self.quantize.codebook_VC, self.quantize.phi,
                                       self.pns, self.using_znorm)

  def img_to_idx(self, img_BHWC: jax.Array) -> List[jax.Array]:
    """Images -> token indices, one (B, pn_k^2) int32 array per scale."""
    return self.residual_quantize(self.encode(img_BHWC))[0]

  def idx_to_fhat(self, idx_list: Sequence[jax.Array], all_scales: bool = False):
    """Token indices of every scale -> f_hat (B, h, w, C) after the last (or every) scale."""
    fhat_list = quantizer.idx_to_fhat(idx_list, self.quantize.codebook_VC,
                                      self.quantize.phi, self.pns)
    return fhat_list if all_scales else fhat_list[-1]

  def fhat_to_img(self, f_hat_BhwC: jax.Array) -> jax.Array:
    """f_hat -> images (B, H, W, 3) clamped to [-1, 1]."""
    return jnp.clip(self.decoder(self.post_quant_conv(f_hat_BhwC)), -1.0, 1.0)

  def idx_to_var_input(self, idx_list: Sequence[jax.Array]) -> jax.Array:
    """Token indices -> teacher-forcing input x_BLC, L = sum(pn^2) - pn_1^2."""
    return quantizer.idx_to_var_input(idx_list, self.quantize.codebook_VC,
                                      self.quantize.phi, self.pns)

  def embed(self, idx_Bl: jax.Array) -> jax.Array:
    """Codebook lookup (B, l) -> (B, l, C)."""
    return quantizer.embed(self.quantize.codebook_VC, idx_Bl)

  def ar_step(self, k: int, f_hat_BhwC: jax.Array,
              h_BkkC: jax.Array) -> Tuple[jax.Array, Optional[jax.Array]]:
    """Adds scale k's embeddings (B, pn_k, pn_k, C); returns (f_hat, next scale's input
    map (B, pn_{k+1}, pn_{k+1}, C) or None after the last scale)."""
    return quantizer.ar_step(k, f_hat_BhwC, h_BkkC, self.pns, self.quantize.phi)

  def __call__(self, img_BHWC: jax.Array,
               train: bool = False) -> Tuple[jax.Array, jax.Array, Dict[str, Any]]:
    """Tokenizer training forward: (recon_BHWC unclamped, vq_loss, {'idx', 'f', 'fhat'}).

    The decoder sees the straight-through f_hat, so reconstruction gradients reach the encoder. The aux
    holds the token indices, the latent f_BhwC and the f_hat after each scale (codebook restarts and EMA
    updates need the last two).
    """
    f_BhwC = self.encode(img_BHWC, train)
    if self.is_initializing():
      self.quantize(f_BhwC)
    idx_list, fhat_list = self.residual_quantize(f_BhwC)
    loss = quantizer.vq_loss(f_BhwC, fhat_list, self.beta)
    f_st = quantizer.straight_through(f_BhwC, fhat_list[-1])
    recon = self.decoder(self.post_quant_conv(f_st), train)
    return recon, loss, {'idx': idx_list, 'f': f_BhwC, 'fhat': fhat_list}
