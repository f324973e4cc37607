"""Codebook health for multi-scale VQ training: usage, perplexity, dead-code restart, EMA updates.

Collapse at the small scales is the known failure of multi-scale residual quantizers, so every
quantity is kept per scale. All functions are pure and jittable; the state is a dict of arrays
that lives in the train state and is checkpointed with it (so resume is exact):
  last_hit_SV  int32 [S, V]  last step at which code v was chosen at scale s (-1: never)
  hits_SV      f32   [S, V]  exponential moving average of per-step hit counts
"Usage over a window of W steps" is exact: the fraction of codes hit at least once in the last W
steps. Perplexity uses the moving-average counts, so it too describes the window, not one batch.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def init_health(num_scales: int, vocab_size: int) -> dict[str, jax.Array]:
  return {'last_hit_SV': jnp.full((num_scales, vocab_size), -1, jnp.int32),
          'hits_SV': jnp.zeros((num_scales, vocab_size), jnp.float32)}


def hit_counts(idx_list: Sequence[jax.Array], vocab_size: int) -> jax.Array:
  """Per-scale code histograms [S, V] (float32) of a list of [B, pn²] index arrays."""
  return jnp.stack([jnp.zeros((vocab_size,), jnp.float32).at[idx.reshape(-1)].add(1.0)
                    for idx in idx_list])


def update_health(health: dict[str, jax.Array], counts_SV: jax.Array, step: jax.Array,
                  window: int) -> dict[str, jax.Array]:
  """Records this step's hits; the moving average spans about `window` steps."""
  decay = 1.0 - 1.0 / max(window, 1)
  return {'last_hit_SV': jnp.where(counts_SV > 0, step.astype(jnp.int32), health['last_hit_SV']),
          'hits_SV': decay * health['hits_SV'] + (1.0 - decay) * counts_SV}


def recently_used(health: dict[str, jax.Array], step: jax.Array, window: int) -> jax.Array:
  """[S, V] bool: code hit at that scale within the last `window` steps (up to `step`)."""
  last = health['last_hit_SV']
  return (last >= 0) & (step.astype(jnp.int32) - last < window)


def health_metrics(health: dict[str, jax.Array], step: jax.Array, window: int) -> dict[str, jax.Array]:
  """usage_scale_k (% of codes hit in the window), perplexity_scale_k, and usage over all scales."""
  used_SV = recently_used(health, step, window)
  p_SV = health['hits_SV'] / jnp.maximum(health['hits_SV'].sum(-1, keepdims=True), 1e-12)
  entropy_S = -jnp.sum(jnp.where(p_SV > 0, p_SV * jnp.log(jnp.where(p_SV > 0, p_SV, 1.0)), 0.0), -1)
  out = {'usage': 100.0 * jnp.mean(jnp.any(used_SV, axis=0))}
  for k in range(used_SV.shape[0]):
    out[f'usage_scale_{k}'] = 100.0 * jnp.mean(used_SV[k])
    out[f'perplexity_scale_{k}'] = jnp.exp(entropy_S[k])
  return out


def dead_codes(health: dict[str, jax.Array], step: jax.Array, window: int) -> jax.Array:
  """[V] bool: codes no scale has chosen in the last `window` steps."""
  return ~jnp.any(recently_used(health, step, window), axis=0)


def restart_codes(codebook_VC: jax.Array, dead_V: jax.Array, rest_list: Sequence[jax.Array],
                  rng: jax.Array) -> jax.Array:
  """Moves every dead code onto a quantizer input drawn from the current batch.

  `rest_list` holds, per scale, the vectors the quantizer looked up ([N_s, C]: the area-resized
  residual of the encoder output). A scale is drawn uniformly first, then a vector within it, so
  the one-token first scales are not swamped by the last scale's many positions.
  """
  vocab_size = codebook_VC.shape[0]
  k_scale, *k_pick = jax.random.split(rng, len(rest_list) + 1)
  scale_V = jax.random.randint(k_scale, (vocab_size,), 0, len(rest_list))
  new_VC = codebook_VC
  for s, (rest_NC, key) in enumerate(zip(rest_list, k_pick)):
    pick_V = jax.random.randint(key, (vocab_size,), 0, rest_NC.shape[0])
    take = dead_V & (scale_V == s)
    new_VC = jnp.where(take[:, None], rest_NC[pick_V].astype(codebook_VC.dtype), new_VC)
  return new_VC


def init_ema(codebook_VC: jax.Array) -> dict[str, jax.Array]:
  """EMA k-means statistics that start at the current codebook (one virtual hit per code)."""
  return {'count_V': jnp.ones(codebook_VC.shape[:1], jnp.float32),
          'sum_VC': codebook_VC.astype(jnp.float32)}


def ema_update(ema: dict[str, jax.Array], codebook_VC: jax.Array, idx_list: Sequence[jax.Array],
               rest_list: Sequence[jax.Array], decay: float,
               min_count: float = 1e-5) -> tuple[dict[str, jax.Array], jax.Array]:
  """One EMA k-means step over all scales (VQ-VAE-2): -> (new statistics, new codebook [V, C]).

  Each code moves to the running mean of the quantizer inputs assigned to it at any scale. A code
  whose running count has decayed below `min_count` keeps its vector (instead of drifting to 0 as
  with Laplace smoothing); dead-code restarts are the cure for those.
  """
  vocab_size, c = ema['sum_VC'].shape
  count_V = jnp.zeros((vocab_size,), jnp.float32)
  sum_VC = jnp.zeros((vocab_size, c), jnp.float32)
  for idx, rest_NC in zip(idx_list, rest_list):
    flat = idx.reshape(-1)
    count_V = count_V.at[flat].add(1.0)
    sum_VC = sum_VC.at[flat].add(rest_NC.astype(jnp.float32))
  count_V = decay * ema['count_V'] + (1 - decay) * count_V
  sum_VC = decay * ema['sum_VC'] + (1 - decay) * sum_VC
  alive = count_V > min_count
  new_VC = jnp.where(alive[:, None], sum_VC / jnp.where(alive, count_V, 1.0)[:, None],
                     codebook_VC.astype(jnp.float32))
  return {'count_V': count_V, 'sum_VC': sum_VC}, new_VC.astype(codebook_VC.dtype)


def reset_ema(ema: dict[str, jax.Array], dead_V: jax.Array,
              codebook_VC: jax.Array) -> dict[str, jax.Array]:
  """Restarted codes get fresh EMA statistics (one virtual hit at their new position)."""
  return {'count_V': jnp.where(dead_V, 1.0, ema['count_V']),
          'sum_VC': jnp.where(dead_V[:, None], codebook_VC.astype(jnp.float32), ema['sum_VC'])}
