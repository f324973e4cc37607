"""Class-conditional next-token (raster) generation: one token per step, a static KV cache, CFG.

The batch is doubled (conditional rows first, then the unconditional class `num_classes`); position i's
logits are guided as (1 + cfg) * cond - cfg * uncond (a constant guidance: raster order has no coarse
scales to leave unguided, so VAR's ramp over scales has no analogue), divided by the temperature,
filtered by top-k then top-p (`sampling.filter_top_k_top_p`) and sampled. The n² steps are one
`lax.fori_loop` inside one jit, the cache preallocated for all n² positions and written in place, so
a given batch shape compiles once and every knob (cfg, top-k, top-p, temperature, the key) is traced.

The tokens of the single scale are decoded by the single-scale tokenizer (`idx_to_fhat`,
`fhat_to_img`).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from var_jax import errors
from var_jax.models import next_token as next_token_lib
from var_jax.models import sampling
from var_jax.models import var as var_lib


def _split(rng):
  """Two keys from one key, or two per-row key arrays from keys (B,) (row b's from rng[b] alone)."""
  if rng.ndim == 0:
    return tuple(jax.random.split(rng))
  keys_B2 = jax.vmap(jax.random.split)(rng)
  return keys_B2[:, 0], keys_B2[:, 1]


class Sampler:
  """Generates images with a NextToken model and its single-scale VQVAE.

  `sampler(params, vae_params, label_B, rng, cfg=1.5, top_k=0, top_p=0.0, more_smooth=False,
  temperature=1.0)` returns ([idx_BL int32], images (B, H, W, 3) float32 in [0, 1]): the same shapes
  as `sampling.Sampler` with its one scale, so callers of either take both. rng is one key, or one
  key per row (shape (B,)): each row's sample then depends on its own key alone (var_jax.eval.generate).
  more_smooth is VAR's visualisation mode and must be False here.
  """

  def __init__(self, model: next_token_lib.NextToken, vae_model: Any):
    sampling.check_fits(model, vae_model, (('patch_nums', 'patch_nums'), ('vocab_size', 'vocab_size')))
    # The token loop's position is traced; remat takes it as static, and changes no parameter.
    self.model, self.vae = model.clone(remat_policy='none'), vae_model
    self.patch_nums = tuple(model.patch_nums)
    self._generate = jax.jit(self._generate_fn)

  def _generate_fn(self, params, vae_params, label_B, rng, cfg, top_k, top_p, temperature):
    model, variables = self.model, {'params': params}
    B, L = label_B.shape[0], model.seq_len
    label_2B = jnp.concatenate([label_B, jnp.full_like(label_B, model.num_classes)])
    x_2B1C, cond_2BD = model.apply(variables, label_2B, method=next_token_lib.NextToken.first_token)
    shape = model.kv_cache_shape(2 * B)
    dtype = var_lib.DTYPES[model.dtype]
    kv = (jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))

    def step(i, carry):
      kv, x_2B1C, idx_BL, rng = carry
      logits_2B1V, kv = model.apply(variables, i, x_2B1C, cond_2BD, kv,
                                    method=next_token_lib.NextToken.decode_token)
      logits_BV = ((1 + cfg) * logits_2B1V[:B, 0] - cfg * logits_2B1V[B:, 0]) / temperature
      logits_BV = jax.lax.cond(jnp.logical_or(top_k > 0, top_p > 0),
                               lambda x: sampling.filter_top_k_top_p(x, top_k, top_p), lambda x: x,
                               logits_BV)
      rng, key = _split(rng)
      categorical = lambda key, x: jax.random.categorical(key, x, axis=-1)
      idx_B = (categorical(key, logits_BV) if key.ndim == 0 else jax.vmap(categorical)(key, logits_BV))
      idx_B = idx_B.astype(jnp.int32)
      idx_BL = idx_BL.at[:, i].set(idx_B)
      # Position i + 1's input; at the last step it is computed and unused (L - 1 is the last valid).
      x_B1C = model.apply(variables, jnp.minimum(i + 1, L - 1), idx_B,
                          method=next_token_lib.NextToken.embed_token)
      return kv, jnp.concatenate([x_B1C, x_B1C]).astype(x_2B1C.dtype), idx_BL, rng

    carry = (kv, x_2B1C, jnp.zeros((B, L), jnp.int32), rng)
    _, _, idx_BL, _ = jax.lax.fori_loop(0, L, step, carry)
    vae_vars = {'params': vae_params}
    f_hat = self.vae.apply(vae_vars, [idx_BL], method='idx_to_fhat')
    img = self.vae.apply(vae_vars, f_hat, method='fhat_to_img')
    return idx_BL, (img + 1) * 0.5

  def __call__(self, params, vae_params, label_B, rng, cfg: float = 1.5, top_k: int = 0,
               top_p: float = 0.0, more_smooth: bool = False, temperature: float = 1.0):
    sampling.check_knobs(cfg, top_k, top_p, temperature, vocab_size=self.model.vocab_size)
    if more_smooth:
      raise errors.ConfigError('more_smooth is a next-scale (VAR) visualisation mode; the next-token sampler '
                       'has none')
    label_B = sampling.label_batch(label_B, self.model.num_classes)
    idx_BL, img = self._generate(params, vae_params, jnp.asarray(label_B, jnp.int32), rng,
                                 jnp.float32(cfg), jnp.int32(top_k), jnp.float32(top_p),
                                 jnp.float32(temperature))
    return [idx_BL], img
