"""Zero-shot editing with a VAR sampler: in-painting, out-painting, class-conditional editing.

As the official `demo_zero_shot_edit.ipynb`: the image is tokenized at every scale; a keep mask at
the last scale (pn_K x pn_K, 1 = keep the image's token, 0 = let the model generate) is resized to
every scale with torch's bilinear interpolation (align_corners=False) and thresholded at > 0.5, and
every scale with at most 3 tokens is taken from the image whole. Sampling runs as usual except that
kept positions take the image's tokens before f_hat is updated, so the later scales (and the
transformer's inputs) see them.

Modes: in-paint (a box or painted region is regenerated), out-paint (the box or region is kept, the
rest regenerated). With the unconditional class `num_classes` the edit follows the image; with a
class in [0, num_classes) it is class-conditional editing.

Errors: a box or mask that regenerates nothing is refused (the result would be the image's own
reconstruction); one that keeps nothing at the last scale is allowed (the coarsest scales still come
from the image: a variation of it).
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from var_jax import errors
from var_jax.models import resize

MODES = ('inpaint', 'outpaint')
# Scales with at most this many tokens are always the image's (official `ph * pw <= 3`).
ALWAYS_KEPT_TOKENS = 3


def _check_mode(mode: str) -> None:
  if mode not in MODES:
    raise errors.ConfigError(f'edit mode must be one of {MODES}, got {mode!r}')


def _from_inside(inside_KK: np.ndarray, mode: str) -> np.ndarray:
  """Keep mask from the marked region: in-paint regenerates it, out-paint keeps it."""
  inside_KK = inside_KK.astype(np.float32)
  return 1 - inside_KK if mode == 'inpaint' else inside_KK


def box_keep_mask(box_yxyx: Sequence[float], side: int, mode: str = 'inpaint', what: str = 'box') -> np.ndarray:
  """(side, side) float32 keep mask for a box (y0, x0, y1, x1) given as fractions of the image; ConfigError
  naming `what` (e.g. a flag) for a box that is not one or covers no token.

  The box covers rows round(y0 * side) to round(y1 * side) (exclusive; Python's round, as the
  official `get_edit_mask`), likewise columns.
  """
  _check_mode(mode)
  box = np.asarray(box_yxyx, np.float64)
  if box.shape != (4,) or not np.isfinite(box).all() or box.min() < 0 or box.max() > 1:
    raise errors.ConfigError(f'{what} must be (y0, x0, y1, x1) fractions in [0, 1], got {tuple(box_yxyx)}')
  y0, x0, y1, x1 = (round(float(v) * side) for v in box)
  if y1 <= y0 or x1 <= x0:
    raise errors.ConfigError(f'{what} {tuple(box_yxyx)} covers no token of the {side}x{side} last scale')
  inside_KK = np.zeros((side, side), bool)
  inside_KK[y0:y1, x0:x1] = True
  return _from_inside(inside_KK, mode)


def keep_mask_from_image(mask_img: Any, side: int, mode: str = 'inpaint') -> np.ndarray:
  """(side, side) float32 keep mask from a painted mask image (H, W) or (H, W, C) of any size.

  A pixel is marked where its channel mean is >= 0.5 (bool, float in [0, 1], or uint8 / 255); a
  token is marked where at least half the pixels of its torch 'area' window are. In-paint
  regenerates the marked tokens, out-paint keeps them.
  """
  _check_mode(mode)
  img = np.asarray(mask_img)
  if img.ndim == 3:
    img = img.mean(axis=-1)
  if img.ndim != 2 or not img.size:
    raise errors.ConfigError(f'mask image must be (H, W) or (H, W, C), got shape {np.shape(mask_img)}')
  scale = 255.0 if img.dtype == np.uint8 else 1.0
  marked_HW = (img.astype(np.float64) / scale >= 0.5).astype(np.int64)
  window_h = (resize.area_matrix(img.shape[0], side) > 0).astype(np.int64)
  window_w = (resize.area_matrix(img.shape[1], side) > 0).astype(np.int64)
  count_KK = window_h @ marked_HW @ window_w.T
  size_KK = np.outer(window_h.sum(1), window_w.sum(1))
  return _from_inside(2 * count_KK >= size_KK, mode)


def check_keep_mask(keep_mask: Any, side: int, batch: int) -> np.ndarray:
  """The keep mask as (batch, side, side) float32, or a one-line ConfigError."""
  mask = np.asarray(keep_mask)
  if mask.ndim == 2:
    mask = np.broadcast_to(mask, (batch,) + mask.shape)
  if mask.shape != (batch, side, side):
    raise errors.ConfigError(f'keep mask must be ({side}, {side}) or ({batch}, {side}, {side}) (the last '
                     f'scale), got shape {np.shape(keep_mask)}')
  mask = mask.astype(np.float32)
  if not np.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
    raise errors.ConfigError('keep mask values must be in [0, 1] (1 = keep the image token)')
  full = np.flatnonzero((mask > 0.5).all(axis=(1, 2)))
  if full.size:
    raise errors.ConfigError(f'keep mask of image {full[0]} keeps every last-scale token: nothing to '
                     f'regenerate')
  return mask


@functools.partial(jax.jit, static_argnums=1)
def scale_keep_masks(keep_BKK: jax.Array, patch_nums: tuple[int, ...]) -> list[jax.Array]:
  """Last-scale keep mask (B, pn_K, pn_K) -> per scale (B, pn_k²) bool: keep the image's token."""
  B = keep_BKK.shape[0]
  keeps = []
  for pn in patch_nums:
    if pn * pn <= ALWAYS_KEPT_TOKENS:
      keeps.append(jnp.ones((B, pn * pn), jnp.bool_))
    else:
      mask_Bpp1 = resize.bilinear_resize(keep_BKK[..., None].astype(jnp.float32), (pn, pn))
      keeps.append((mask_Bpp1 > 0.5).reshape(B, pn * pn))
  return keeps


@functools.partial(jax.jit, static_argnums=0)
def _tokenize(vae, vae_params, img_BHWC):
  return vae.apply({'params': vae_params}, img_BHWC, method='img_to_idx')


def source_tokens(vae: Any, vae_params, source: Any) -> list[jax.Array]:
  """The image tokens, one (B, pn_k²) int32 array per scale, from images or from tokens.

  source: images (B, H, W, 3) in [-1, 1] (tokenized here), or a list / tuple of per-scale tokens.
  """
  pns, V = tuple(vae.patch_nums), vae.vocab_size
  if not isinstance(source, (list, tuple)):
    img = np.asarray(source, np.float32)
    if img.size and (np.abs(img).max() > 1 + 1e-6 or not np.isfinite(img).all()):
      raise errors.ConfigError('images to edit must be in [-1, 1] (the tokenizer input range)')
    return _tokenize(vae, vae_params, jnp.asarray(img))
  if len(source) != len(pns):
    raise errors.ConfigError(f'image tokens must hold one array per scale ({len(pns)}), got {len(source)}')
  idx_list = [np.asarray(i) for i in source]
  batch = idx_list[0].shape[0] if idx_list[0].ndim else 0
  for k, (idx_Bl, pn) in enumerate(zip(idx_list, pns)):
    if idx_Bl.shape != (batch, pn * pn) or not np.issubdtype(idx_Bl.dtype, np.integer):
      raise errors.ConfigError(f'image tokens of scale {k} must be integers of shape ({batch}, {pn * pn}), '
                       f'got {idx_Bl.dtype} {idx_Bl.shape}')
    if idx_Bl.size and (idx_Bl.min() < 0 or idx_Bl.max() >= V):
      raise errors.ConfigError(f'image tokens of scale {k} must be in [0, {V}), got values in '
                       f'[{idx_Bl.min()}, {idx_Bl.max()}]')
  return [jnp.asarray(i, jnp.int32) for i in idx_list]


def edit(sampler, var_params, vae_params, label_B: Any, rng: jax.Array, source: Any,
         keep_mask: Any, cfg: float = 1.5, top_k: int = 0, top_p: float = 0.0,
         more_smooth: bool = False):
  """Zero-shot edit with a `sampling.Sampler`; returns (idx list, images (B, H, W, 3) in [0, 1]).

  source: the images to edit, (B, H, W, 3) in [-1, 1], or their tokens (see `source_tokens`).
  keep_mask: (pn_K, pn_K) or (B, pn_K, pn_K), float in [0, 1] or bool, 1 = keep the image's token
    (`box_keep_mask`, `keep_mask_from_image`); traced, so new masks do not recompile.
  label_B: (B,) classes or one class: num_classes (unconditional) for plain in-/out-painting, a
    class in [0, num_classes) for class-conditional editing.
  The returned indices, one (B, pn_k²) int32 array per scale, are those that entered f_hat: the
  image's where kept, the sampled ones elsewhere. cfg, top_k, top_p, more_smooth: as the sampler.
  """
  image_idx = source_tokens(sampler.vae, vae_params, source)
  batch = image_idx[0].shape[0]
  label_B = np.asarray(label_B)
  if label_B.ndim == 0:
    label_B = np.full((batch,), label_B)
  if label_B.shape != (batch,):
    raise errors.ConfigError(f'labels must be one class or ({batch},) (one per image), got shape '
                     f'{label_B.shape}')
  keep_BKK = check_keep_mask(keep_mask, sampler.patch_nums[-1], batch)
  keeps = scale_keep_masks(jnp.asarray(keep_BKK), tuple(sampler.patch_nums))
  return sampler(var_params, vae_params, label_B, rng, cfg=cfg, top_k=top_k, top_p=top_p,
                 more_smooth=more_smooth, forced=list(zip(keeps, image_idx)))
