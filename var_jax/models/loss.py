"""VAR training loss and token metrics (official trainer: per-token CE, weighted sum over L, batch mean)."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from var_jax import errors
from var_jax.models.var import scale_bounds


def token_cross_entropy(logits_BLV, idx_BL, label_smoothing: float = 0.0):
  """Per-token (ce_BL the training CE, smoothed; nll_BL unsmoothed; hit_BL argmax accuracy as float32).

  Passes over the (B, L, V) logits: one max, one exp-sum, one masked sum for the target's logit (a
  compare with an iota, which fuses forward and backward where a gather's backward is a scatter). The
  max also gives argmax accuracy: a token is a hit when its logit is the largest.
  """
  logits_BLV = logits_BLV.astype(jnp.float32)
  max_BL = jax.lax.stop_gradient(logits_BLV.max(-1))
  lse_BL = max_BL + jnp.log(jnp.exp(logits_BLV - max_BL[..., None]).sum(-1))
  is_target_BLV = jax.lax.broadcasted_iota(jnp.int32, logits_BLV.shape, 2) == idx_BL[..., None]
  target_BL = jnp.where(is_target_BLV, logits_BLV, 0.0).sum(-1)
  nll_BL = lse_BL - target_BL
  ce_BL = nll_BL
  if label_smoothing:
    ce_BL = (1.0 - label_smoothing) * nll_BL + label_smoothing * (lse_BL - logits_BLV.mean(-1))
  return ce_BL, nll_BL, (target_BL >= max_BL).astype(jnp.float32)


def var_loss(logits_BLV, idx_BL, patch_nums: Sequence[int], label_smoothing: float = 0.0,
             weights_L=None):
  """Cross-entropy of next-scale logits against the concatenated token indices.

  Args:
    logits_BLV: (B, L, V) logits, L = sum(pn²).
    idx_BL: (B, L) int target indices, scales concatenated.
    patch_nums: scale sizes.
    label_smoothing: torch `CrossEntropyLoss(label_smoothing=...)`: (1 - s) * nll + s * mean_V(-log p).
    weights_L: (L,) per-position weights summed over L; None = the official uniform 1/L.

  Returns:
    (loss, metrics). loss = mean_B sum_L w_L ce_BL (the training objective, smoothed). Metrics:
    `loss` (same), `loss_last_scale` (unsmoothed CE over the last scale), `acc`, `acc_last_scale`
    (argmax token accuracy, fractions in [0, 1]), and per scale k `loss_scale_k` (unsmoothed CE) and
    `acc_scale_k`.
  """
  bounds = scale_bounds(patch_nums)
  L = bounds[-1][1]
  if logits_BLV.ndim != 3 or logits_BLV.shape[1] != L:
    raise errors.ConfigError(f'logits must be (B, {L}, V) for patch_nums={tuple(patch_nums)}, '
                     f'got {tuple(logits_BLV.shape)}')
  if idx_BL.shape != logits_BLV.shape[:2]:
    raise errors.ConfigError(f'token indices must be {tuple(logits_BLV.shape[:2])}, got {tuple(idx_BL.shape)}')
  if not 0.0 <= label_smoothing < 1.0:
    raise errors.ConfigError(f'label_smoothing must be in [0, 1), got {label_smoothing}')
  if weights_L is None:
    weights_L = jnp.full((L,), 1.0 / L, jnp.float32)
  elif jnp.shape(weights_L) != (L,):
    raise errors.ConfigError(f'weights_L must be ({L},), got {jnp.shape(weights_L)}')

  ce_BL, nll_BL, hit_BL = token_cross_entropy(logits_BLV, idx_BL, label_smoothing)
  loss = (ce_BL * weights_L).sum(-1).mean()

  metrics = {'loss': loss, 'acc': hit_BL.mean()}
  for k, (begin, end) in enumerate(bounds):
    metrics[f'loss_scale_{k}'] = nll_BL[:, begin:end].mean()
    metrics[f'acc_scale_{k}'] = hit_BL[:, begin:end].mean()
  metrics['loss_last_scale'] = metrics[f'loss_scale_{len(bounds) - 1}']
  metrics['acc_last_scale'] = metrics[f'acc_scale_{len(bounds) - 1}']
  return loss, metrics


def masked_loss(logits_BLV, idx_BL, mask_BL, label_smoothing: float = 0.0):
  """MaskGIT's objective: cross-entropy on the masked positions only, averaged over the batch's masked tokens.

  Args:
    logits_BLV: (B, L, V) logits at every position.
    idx_BL: (B, L) int target indices.
    mask_BL: (B, L) bool, True where the input token was masked (the positions scored).
    label_smoothing: as `var_loss`.

  Returns:
    (loss, metrics): `loss` (smoothed CE over masked tokens), `acc` (argmax accuracy over them),
    `nll` (unsmoothed CE over them) and `mask_ratio` (masked fraction of the batch's positions).
  """
  if logits_BLV.ndim != 3 or idx_BL.shape != logits_BLV.shape[:2] or mask_BL.shape != idx_BL.shape:
    raise errors.ConfigError(f'logits (B, L, V), targets and mask (B, L) must agree, got {tuple(logits_BLV.shape)}, '
                     f'{tuple(idx_BL.shape)}, {tuple(mask_BL.shape)}')
  if not 0.0 <= label_smoothing < 1.0:
    raise errors.ConfigError(f'label_smoothing must be in [0, 1), got {label_smoothing}')
  ce_BL, nll_BL, hit_BL = token_cross_entropy(logits_BLV, idx_BL, label_smoothing)
  w_BL = mask_BL.astype(jnp.float32)
  count = jnp.maximum(w_BL.sum(), 1.0)
  mean = lambda x_BL: (x_BL * w_BL).sum() / count
  loss = mean(ce_BL)
  return loss, {'loss': loss, 'acc': mean(hit_BL), 'nll': mean(nll_BL), 'mask_ratio': w_BL.mean()}
