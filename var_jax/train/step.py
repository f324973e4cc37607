"""Pure train and eval steps. Bound to a model with `functools.partial`, then jitted once by the loop.

A batch is either images `{'image': f32[B,H,W,3], 'label': i32[B]}`, tokenized here by the frozen
tokenizer, or pre-tokenized `{'tokens': i32[B,L], 'label': i32[B]}` (scales concatenated). Either
way the teacher-forcing input comes from the tokenizer's codebook and phi convolutions.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from var_jax.models import loss as loss_lib
from var_jax.train import state as state_lib


def split_scales(idx_BL: jax.Array, patch_nums) -> list[jax.Array]:
  """[B, sum pn²] -> one [B, pn²] per scale."""
  bounds, start = [], 0
  for pn in patch_nums[:-1]:
    start += pn * pn
    bounds.append(start)
  return jnp.split(idx_BL, bounds, axis=1)


def teacher_forcing(tokenizer: nn.Module, tok_params: Any, batch: dict, patch_nums):
  """(idx_BL target tokens, x_BLC teacher-forcing input) from images or tokens."""
  variables = {'params': tok_params}
  if 'tokens' in batch:
    idx_list = split_scales(batch['tokens'], patch_nums)
  else:
    idx_list = tokenizer.apply(variables, batch['image'], method='img_to_idx')
  x_BLC = tokenizer.apply(variables, idx_list, method='idx_to_var_input')
  idx_BL = jnp.concatenate(idx_list, axis=1)
  return jax.lax.stop_gradient(idx_BL), jax.lax.stop_gradient(x_BLC)


def train_step(state: state_lib.TrainState, batch: dict, rng: jax.Array, *, model: nn.Module,
               tokenizer: nn.Module, tx: optax.GradientTransformation, lr_fn: optax.Schedule,
               label_smoothing: float = 0.0):
  """One AdamW step on the global batch. Per-step randomness is `fold_in(rng, state.step)`.

  Returns (new state, metrics): the loss terms of `var_loss` plus grad_norm (before clipping) and lr.
  """
  patch_nums = model.patch_nums
  idx_BL, x_BLC = teacher_forcing(tokenizer, state.frozen, batch, patch_nums)
  step_rng = jax.random.fold_in(rng, state.step)

  def loss_fn(params):
    logits_BLV = model.apply({'params': params}, batch['label'], x_BLC, train=True,
                             rngs={'dropout': step_rng})
    return loss_lib.var_loss(logits_BLV, idx_BL, patch_nums, label_smoothing=label_smoothing)

  (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(metrics, grad_norm=optax.tree.norm(grads), lr=lr_fn(state.step))
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(state: state_lib.TrainState, batch: dict, *, model: nn.Module,
              tokenizer: nn.Module):
  """Loss metrics of the current params on a batch (no dropout, no label smoothing)."""
  idx_BL, x_BLC = teacher_forcing(tokenizer, state.frozen, batch, model.patch_nums)
  logits_BLV = model.apply({'params': state.params}, batch['label'], x_BLC, train=False)
  _, metrics = loss_lib.var_loss(logits_BLV, idx_BL, model.patch_nums)
  return metrics
