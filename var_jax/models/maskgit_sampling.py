"""MaskGIT's iterative parallel decoding, class-conditional with classifier-free guidance.

The map starts all [MASK]. Each of T steps (default 8) runs the network once on the whole map and
  1. samples a token at every masked position from the guided logits ((1 + cfg) cond - cfg uncond, a
     constant guidance as the next-token sampler's), divided by the temperature and filtered by top-k
     then top-p (`sampling.filter_top_k_top_p`);
  2. scores each sampled token by its log-probability under that distribution, plus Gumbel noise
     scaled by `noise * (1 - (t + 1) / T)` (annealed to 0 at the last step); known tokens score +inf;
  3. keeps the most confident and re-masks the `masked_after(t)` least confident, where
     masked_after(t) = floor(L cos(pi/2 (t + 1) / T)) (the training schedule at progress (t + 1) / T),
     capped at one less than the step before so that every step fixes at least one token; 0 at t = T - 1.
Tokens once fixed are never re-masked. The algorithm (`decode_step`, `decode`) is separate from the
network: it calls a `logits_fn(idx_BL) -> logits_BLV` (as maskgit's `tokens_to_logits`), which the
`Sampler` builds from the model, the label and the guidance.

The T steps are one `lax.fori_loop` in one jit: a batch shape compiles once, and every knob (cfg, top-k,
top-p, temperature, T, the noise scale, the key) is traced. rng is one key, or one key per row (B,),
which makes each row's sample depend on its own key alone (var_jax.eval.generate keys row i by its index).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from var_jax import errors
from var_jax.models import maskgit as maskgit_lib
from var_jax.models import sampling

DEFAULT_STEPS = 8
DEFAULT_NOISE = 4.5  # MaskGIT's confidence-noise scale ("choice temperature") on ImageNet


def masked_after(t, steps, seq_len: int, before):
  """Tokens still masked after step t (0-based) of `steps`: floor(L gamma((t + 1) / T)), at most
  `before - 1` (the count after the step before; L before the first) and at least 0."""
  scheduled = jnp.floor(seq_len * maskgit_lib.mask_schedule((t + 1) / steps)).astype(jnp.int32)
  return jnp.maximum(jnp.minimum(scheduled, before - 1), 0)


def decode_step(logits_fn: Callable[[jax.Array], jax.Array], t, steps, idx_BL, before, rng, *, mask_id: int,
                top_k, top_p, noise):
  """One decoding step: returns (idx_BL with `masked_after(t)` positions per row still MASK_ID, that count).

  logits_fn(idx_BL) -> logits_BLV, guided and tempered. rng: one key, or keys (B,) (one per row).
  """
  L = idx_BL.shape[1]
  unknown_BL = idx_BL == mask_id
  logits_BLV = logits_fn(idx_BL).astype(jnp.float32)
  logits_BLV = jax.lax.cond(jnp.logical_or(top_k > 0, top_p > 0),
                            lambda x: sampling.filter_top_k_top_p(x, top_k, top_p), lambda x: x, logits_BLV)
  key_sample, key_noise = _split2(rng)
  draw = lambda key, x_LV: jax.random.categorical(key, x_LV, axis=-1)
  sampled_BL = sampling.per_row(draw, key_sample, logits_BLV).astype(jnp.int32)
  logp_BL = jnp.take_along_axis(jax.nn.log_softmax(logits_BLV, axis=-1), sampled_BL[..., None], -1)[..., 0]
  gumbel_BL = sampling.per_row(lambda key, x: jax.random.gumbel(key, x.shape), key_noise, logp_BL)
  scale = noise * (1.0 - (t + 1) / steps)
  confidence_BL = jnp.where(unknown_BL, logp_BL + scale * gumbel_BL, jnp.inf)
  count = masked_after(t, steps, L, before)
  # Exactly `count` positions per row re-masked: the lowest-ranked (ties by position), all unknown ones.
  rank_BL = jnp.argsort(jnp.argsort(confidence_BL, axis=-1, stable=True), axis=-1)
  remask_BL = rank_BL < count
  idx_BL = jnp.where(unknown_BL, sampled_BL, idx_BL)
  return jnp.where(remask_BL, mask_id, idx_BL).astype(jnp.int32), count


def decode(logits_fn: Callable[[jax.Array], jax.Array], batch: int, seq_len: int, rng, *, mask_id: int,
           steps=DEFAULT_STEPS, top_k=0, top_p=0.0, noise=DEFAULT_NOISE):
  """T = `steps` decoding steps from an all-MASK map -> idx_BL int32 (B, L), every token fixed."""
  def body(t, carry):
    idx_BL, before, rng = carry
    rng, key = _split2(rng)
    idx_BL, count = decode_step(logits_fn, t, steps, idx_BL, before, key, mask_id=mask_id, top_k=top_k,
                                top_p=top_p, noise=noise)
    return idx_BL, count, rng

  idx_BL = jnp.full((batch, seq_len), mask_id, jnp.int32)
  return jax.lax.fori_loop(0, steps, body, (idx_BL, jnp.int32(seq_len), rng))[0]


def _split2(rng):
  """Two keys from one key, or two per-row key arrays from keys (B,) (row b's from rng[b] alone)."""
  if rng.ndim == 0:
    return tuple(jax.random.split(rng))
  keys_B2 = jax.vmap(jax.random.split)(rng)
  return keys_B2[:, 0], keys_B2[:, 1]


def guided_logits_fn(model: maskgit_lib.MaskGIT, params, label_B, cfg, temperature):
  """logits_fn for `decode`: the conditional and unconditional rows in one batch of 2B, guided as
  (1 + cfg) cond - cfg uncond, divided by the temperature."""
  label_2B = jnp.concatenate([label_B, jnp.full_like(label_B, model.num_classes)])

  def logits_fn(idx_BL):
    logits_2BLV = model.apply({'params': params}, label_2B, jnp.concatenate([idx_BL, idx_BL]))
    B = idx_BL.shape[0]
    return ((1 + cfg) * logits_2BLV[:B] - cfg * logits_2BLV[B:]) / temperature
  return logits_fn


def check_decoding_knobs(steps: int, noise: float) -> None:
  """ConfigError naming `steps` or `noise` when out of range."""
  if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
    raise errors.ConfigError(f'steps must be a positive integer (decoding steps T), got {steps!r}')
  if not (math.isfinite(noise) and noise >= 0):
    raise errors.ConfigError(f'noise must be >= 0 and finite (confidence noise scale), got {noise}')


class Sampler:
  """Generates images with a MaskGIT model and its single-scale VQVAE.

  `sampler(params, vae_params, label_B, rng, cfg=1.5, top_k=0, top_p=0.0, more_smooth=False,
  temperature=1.0, steps=8, noise=4.5)` returns ([idx_BL int32], images (B, H, W, 3) float32 in [0, 1]),
  the shapes of the other orderings' samplers with one scale. more_smooth is VAR's visualisation mode
  and must be False here.
  """

  def __init__(self, model: maskgit_lib.MaskGIT, vae_model: Any):
    sampling.check_fits(model, vae_model, (('patch_nums', 'patch_nums'), ('vocab_size', 'vocab_size')))
    self.model, self.vae = model, vae_model
    self.patch_nums = tuple(model.patch_nums)
    self._generate = jax.jit(self._generate_fn)

  def _generate_fn(self, params, vae_params, label_B, rng, cfg, top_k, top_p, temperature, steps, noise):
    model = self.model
    logits_fn = guided_logits_fn(model, params, label_B, cfg, temperature)
    idx_BL = decode(logits_fn, label_B.shape[0], model.seq_len, rng, mask_id=model.mask_id, steps=steps,
                    top_k=top_k, top_p=top_p, noise=noise)
    vae_vars = {'params': vae_params}
    f_hat = self.vae.apply(vae_vars, [idx_BL], method='idx_to_fhat')
    img = self.vae.apply(vae_vars, f_hat, method='fhat_to_img')
    return idx_BL, (img + 1) * 0.5

  def __call__(self, params, vae_params, label_B, rng, cfg: float = 1.5, top_k: int = 0, top_p: float = 0.0,
               more_smooth: bool = False, temperature: float = 1.0, steps: int = DEFAULT_STEPS,
               noise: float = DEFAULT_NOISE):
    sampling.check_knobs(cfg, top_k, top_p, temperature, vocab_size=self.model.vocab_size)
    check_decoding_knobs(steps, noise)
    if more_smooth:
      raise errors.ConfigError('more_smooth is a next-scale (VAR) visualisation mode; the MaskGIT sampler '
                               'has none')
    label_B = sampling.label_batch(label_B, self.model.num_classes)
    idx_BL, img = self._generate(params, vae_params, jnp.asarray(label_B, jnp.int32), rng, jnp.float32(cfg),
                                 jnp.int32(top_k), jnp.float32(top_p), jnp.float32(temperature),
                                 jnp.int32(steps), jnp.float32(noise))
    return [idx_BL], img
