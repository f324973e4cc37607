"""Class-conditional VAR generation with classifier-free guidance and a static-shape KV cache.

As the official `autoregressive_infer_cfg`: the batch is doubled (conditional rows first, then the
unconditional class `num_classes`), scale k's logits are guided with t = cfg * k / (K - 1) as
(1 + t) * cond - t * uncond, filtered by top-k then top-p and sampled; the tokens' codebook vectors
update the tokenizer's f_hat (`ar_step`), whose area-downsampled next-scale map becomes the next input.

Each scale is one jit-compiled step with static shapes (the KV cache is preallocated for all L
positions and written in place), so after the first call with given shapes nothing recompiles.

The same step can force tokens (`forced`): where a per-scale keep mask is set, given tokens
replace the sampled ones before f_hat is updated. That is the official zero-shot editing
(`editing.edit` builds the masks); plain sampling passes None and compiles its own, unchanged step.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from var_jax import errors
from var_jax.models import var as var_lib


def filter_top_k_top_p(logits_BlV, top_k, top_p):
  """Official `sample_with_top_k_top_p_` filtering: -inf outside the top k, then outside the top p.

  Both may be traced. top_k: int, 0 = off; ties with the k-th value are kept. top_p: float, 0 = off;
  keeps the smallest high-probability set whose mass reaches top_p (always the most likely token).
  """
  V = logits_BlV.shape[-1]
  order_BlV = jnp.argsort(logits_BlV, axis=-1)  # ascending; masking below keeps this order
  sorted_BlV = jnp.take_along_axis(logits_BlV, order_BlV, axis=-1)
  kth_Bl1 = jax.lax.dynamic_slice_in_dim(sorted_BlV, jnp.clip(V - top_k, 0, V - 1), 1, axis=-1)
  drop_top_k = jnp.logical_and(top_k > 0, sorted_BlV < kth_Bl1)
  sorted_BlV = jnp.where(drop_top_k, -jnp.inf, sorted_BlV)
  drop_sorted = jnp.cumsum(jax.nn.softmax(sorted_BlV, axis=-1), axis=-1) <= 1 - top_p
  drop_sorted = jnp.logical_and(drop_sorted.at[..., -1].set(False), top_p > 0)
  drop_sorted = jnp.logical_or(drop_sorted, drop_top_k)
  drop_BlV = jnp.take_along_axis(drop_sorted, jnp.argsort(order_BlV, axis=-1), axis=-1)
  return jnp.where(drop_BlV, -jnp.inf, logits_BlV)


def label_batch(label_B, num_classes: int) -> np.ndarray:
  """The class labels of one sampling call as an array; ConfigError unless 1-D, non-empty and in range."""
  label_B = np.asarray(label_B)
  if label_B.ndim != 1 or not label_B.size:
    raise errors.ConfigError(f'labels must be a non-empty 1-D array, got shape {label_B.shape}')
  var_lib.check_labels(label_B, num_classes)
  return label_B


def check_knobs(cfg: float, top_k: int, top_p: float, temperature: float = 1.0,
                vocab_size: int | None = None, prefix: str = '') -> None:
  """ConfigError naming the first sampling knob (`prefix` + its name, e.g. '--cfg') out of range (NaN and inf
  included); top_k's upper bound is checked when `vocab_size` is given."""
  if not (math.isfinite(cfg) and cfg >= 0):
    raise errors.ConfigError(f'{prefix}cfg must be >= 0 and finite, got {cfg}')
  if not 0 <= top_k <= (math.inf if vocab_size is None else vocab_size):
    raise errors.ConfigError(f'{prefix}top_k must be in [0, {vocab_size or "vocabulary size"}] (0 = off), '
                             f'got {top_k}')
  if not 0.0 <= top_p < 1.0:
    raise errors.ConfigError(f'{prefix}top_p must be in [0, 1) (0 = off), got {top_p}')
  if not (math.isfinite(temperature) and temperature > 0):
    raise errors.ConfigError(f'{prefix}temperature must be > 0 and finite, got {temperature}')


def _values(obj: Any, names: tuple[str, ...]) -> tuple:
  return tuple(tuple(v) if isinstance(v, (list, tuple)) else v for v in (getattr(obj, n) for n in names))


def check_fits(model: Any, vae_model: Any, pairs: tuple[tuple[str, str], ...]) -> None:
  """errors.WeightsError naming both sides' values where a generator and its tokenizer do not fit each other.

  pairs: (model attribute, tokenizer attribute) pairs that must be equal."""
  names, vae_names = zip(*pairs)
  want, have = _values(model, names), _values(vae_model, vae_names)
  if want != have:
    kind = type(model).__name__
    raise errors.WeightsError(f'the {kind} and the tokenizer do not fit each other: {kind} '
                              f'({", ".join(names)})={want} but tokenizer ({", ".join(vae_names)})={have}')


# Logical axes of a KV cache buffer (var.VAR.kv_cache_shape).
KV_CACHE_AXES = ('layers', 'batch', 'length', 'heads', 'kv')


def split3(rng):
  """Three keys from one key, or three per-row key arrays from keys (B,) (row b's from rng[b] alone)."""
  if rng.ndim == 0:
    return tuple(jax.random.split(rng, 3))
  keys_B3 = jax.vmap(lambda r: jax.random.split(r, 3))(rng)
  return keys_B3[:, 0], keys_B3[:, 1], keys_B3[:, 2]


def per_row(draw, key, x_B):
  """draw(key, x) on the whole batch with one key, or row by row with keys (B,)."""
  return draw(key, x_B) if key.ndim == 0 else jax.vmap(draw)(key, x_B)


def guidance_ratio(k: int, num_scales: int) -> float:
  """k / (K - 1): 0 at the first scale, 1 at the last."""
  return k / max(num_scales - 1, 1)


class Sampler:
  """Generates images with a VAR and its VQVAE tokenizer.

  `sampler(var_params, vae_params, label_B, rng, cfg=1.5, top_k=0, top_p=0.0, more_smooth=False,
  forced=None)` returns (idx list with one (B, pn_k²) int32 array per scale, images (B, H, W, 3)
  float32 in [0, 1]).
  All knobs and the key are traced: changing them does not recompile. rng is one key, or one key per
  row (shape (B,)), which makes each row's sample depend on its own key alone, not on the batch it
  is in (`var_jax.eval.generate` keys sample i by its index). Labels are class indices in
  [0, num_classes]; num_classes is the unconditional class.
  more_smooth: the official visualisation mode, feeding the tokenizer a gumbel-softmax mixture of
  codebook vectors instead of the sampled tokens' (the returned indices are still the sampled ones).
  forced: None, or one pair (keep_Bl bool, idx_Bl int) per scale, both (B, pn_k²): where keep_Bl
  is set, idx_Bl's tokens replace the sampled ones, in f_hat and in the returned indices (the
  masks are traced: new masks do not recompile).
  """

  def __init__(self, var_model: var_lib.VAR, vae_model: Any):
    check_fits(var_model, vae_model, (('patch_nums', 'patch_nums'), ('vocab_size', 'vocab_size'),
                                      ('cvae', 'z_channels')))
    self.var, self.vae = var_model, vae_model
    self.patch_nums = tuple(var_model.patch_nums)
    self._begin = jax.jit(self._begin_fn)
    # The KV cache (argument 2) is updated in place.
    self._steps = [jax.jit(functools.partial(self._step_fn, k), donate_argnums=(2,))
                   for k in range(len(self.patch_nums))]
    self._finish = jax.jit(self._finish_fn)

  # ---- jitted pieces ----------------------------------------------------------------------------

  def _begin_fn(self, var_params, label_B, rng):
    B = label_B.shape[0]
    label_2B = jnp.concatenate([label_B, jnp.full_like(label_B, self.var.num_classes)])
    x_2BlC, cond_2BD = self.var.apply({'params': var_params}, label_2B,
                                      method=var_lib.VAR.first_tokens)
    cache_dtype = var_lib.DTYPES[self.var.dtype]
    shape = self.var.kv_cache_shape(2 * B)
    pn = self.patch_nums[-1]
    # Sharded along the batch under a mesh and logical-axis rules (data-parallel sampling); else a no-op.
    zeros = lambda: nn.with_logical_constraint(jnp.zeros(shape, cache_dtype), KV_CACHE_AXES)
    kv = (zeros(), zeros())
    return kv, {'x': x_2BlC, 'cond': cond_2BD, 'rng': rng,
                'f_hat': jnp.zeros((B, pn, pn, self.vae.z_channels), jnp.float32)}

  def _step_fn(self, k, var_params, vae_params, kv, state, cfg, top_k, top_p, more_smooth, forced):
    var_vars, vae_vars = {'params': var_params}, {'params': vae_params}
    logits_2BlV, kv = self.var.apply(var_vars, k, state['x'], state['cond'], kv,
                                     method=var_lib.VAR.decode_scale)
    B = logits_2BlV.shape[0] // 2
    ratio = guidance_ratio(k, len(self.patch_nums))
    t = cfg * ratio
    logits_BlV = (1 + t) * logits_2BlV[:B] - t * logits_2BlV[B:]
    rng, key_sample, key_gumbel = split3(state['rng'])
    # Skips the two vocabulary sorts when no filter is on.
    logits_BlV = jax.lax.cond(jnp.logical_or(top_k > 0, top_p > 0),
                              lambda x: filter_top_k_top_p(x, top_k, top_p), lambda x: x, logits_BlV)
    categorical = lambda key, x: jax.random.categorical(key, x, axis=-1)
    idx_Bl = per_row(categorical, key_sample, logits_BlV).astype(jnp.int32)

    def smooth_h():
      tau = max(0.27 * (1 - ratio * 0.95), 0.005)
      gumbel_BlV = per_row(lambda key, x: jax.random.gumbel(key, x.shape), key_gumbel, logits_BlV)
      soft_BlV = jax.nn.softmax((logits_BlV * (1 + ratio) + gumbel_BlV) / tau, axis=-1)
      codebook_VC = self.vae.apply(vae_vars, jnp.arange(self.vae.vocab_size)[None],
                                   method='embed')[0]
      return soft_BlV @ codebook_VC

    hard_h = lambda: self.vae.apply(vae_vars, idx_Bl, method='embed')
    h_BlC = jax.lax.cond(more_smooth, smooth_h, hard_h)
    if forced is not None:
      keep_Bl, given_Bl = forced
      idx_Bl = jnp.where(keep_Bl, given_Bl, idx_Bl)
      given_BlC = self.vae.apply(vae_vars, given_Bl, method='embed')
      h_BlC = jnp.where(keep_Bl[..., None], given_BlC, h_BlC)
    pn = self.patch_nums[k]
    f_hat, next_BnnC = self.vae.apply(vae_vars, k, state['f_hat'],
                                      h_BlC.reshape(B, pn, pn, -1), method='ar_step')
    state = dict(state, rng=rng, f_hat=f_hat)
    if next_BnnC is not None:
      x_BlC = self.var.apply(var_vars, k + 1, next_BnnC.reshape(B, -1, next_BnnC.shape[-1]),
                             method=var_lib.VAR.embed_scale)
      state['x'] = jnp.concatenate([x_BlC, x_BlC])
    return kv, state, idx_Bl

  def _finish_fn(self, vae_params, f_hat):
    img = self.vae.apply({'params': vae_params}, f_hat, method='fhat_to_img')
    return (img + 1) * 0.5

  # ---- public -----------------------------------------------------------------------------------

  def __call__(self, var_params, vae_params, label_B, rng, cfg: float = 1.5, top_k: int = 0,
               top_p: float = 0.0, more_smooth: bool = False, forced=None):
    check_knobs(cfg, top_k, top_p, vocab_size=self.var.vocab_size)
    label_B = label_batch(label_B, self.var.num_classes)
    if forced is not None:
      forced = self._check_forced(forced, label_B.shape[0])
    kv, state = self._begin(var_params, jnp.asarray(label_B, jnp.int32), rng)
    knobs = (jnp.float32(cfg), jnp.int32(top_k), jnp.float32(top_p), jnp.bool_(more_smooth))
    idx_list = []
    for k, step in enumerate(self._steps):
      kv, state, idx_Bl = step(var_params, vae_params, kv, state, *knobs,
                               None if forced is None else forced[k])
      idx_list.append(idx_Bl)
    return idx_list, self._finish(vae_params, state['f_hat'])

  def _check_forced(self, forced, batch: int):
    """forced as (bool, int32) device arrays, or ConfigError naming the scale that is wrong."""
    if len(forced) != len(self.patch_nums):
      raise errors.ConfigError(f'forced must hold one (keep, idx) pair per scale ({len(self.patch_nums)}), '
                       f'got {len(forced)}')
    out = []
    for k, ((keep_Bl, idx_Bl), pn) in enumerate(zip(forced, self.patch_nums)):
      for name, x in (('keep', keep_Bl), ('idx', idx_Bl)):
        if tuple(x.shape) != (batch, pn * pn):
          raise errors.ConfigError(f'forced[{k}] {name} must have shape ({batch}, {pn * pn}), '
                           f'got {tuple(x.shape)}')
      out.append((jnp.asarray(keep_Bl, jnp.bool_), jnp.asarray(idx_Bl, jnp.int32)))
    return out


def make_sampler(var_model: var_lib.VAR, vae_model: Any) -> Sampler:
  """A reusable, compile-once sampler; see `Sampler`."""
  return Sampler(var_model, vae_model)

