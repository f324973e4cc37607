"""Train state and the official VAR optimizer recipe in optax.

Recipe (FoundationVision/VAR train.py, utils/lr_control.py): AdamW with betas (0.9, 0.95), peak
lr = base_lr * batch / 256, linear warmup from `warmup_start` x peak, then "lin0" (hold for 5% of
the remaining steps, then linear down to `final_lr_frac` x peak) or half-cycle cosine; weight decay
cosine-ramped from `weight_decay` to `weight_decay_end` over the whole run and never applied to
biases, 1-D parameters or the position/level embeddings and attention scales; global-norm clipping.
"""
from __future__ import annotations

import math
from typing import Any

from flax import struct
import jax
import jax.numpy as jnp
import optax

# Fraction of the post-warmup steps held at the peak before the linear decay.
_HOLD = {'lin0': 0.05, 'lin': 0.15, 'lin00': 0.0}

# Parameter-name fragments never decayed (official nowd_keys, as named in var_jax models).
NO_DECAY_KEYS = ('pos_start', 'pos_1LC', 'pos_embed', 'lvl_embed', 'scale_mul', 'ada_gss', 'bias',
                 'cls_token', 'start_token', 'cfg_uncond')


@struct.dataclass
class TrainState:
  """Everything a step reads and writes, for every task.

  `frozen` holds what the steps read but never train (VAR's tokenizer, a perceptual network); the loop does
  not checkpoint it (it is rebuilt from the config).
  """
  step: jax.Array
  params: Any
  opt_state: Any
  frozen: Any


def lr_schedule(optim_cfg: Any, steps: int) -> optax.Schedule:
  """Learning rate per step (0-based), as official `lr_wd_annealing` with the peak folded in.

  Past the last step (`steps - 1`) it holds at `final_lr_frac` x peak: never negative.
  """
  peak, warmup = float(optim_cfg.lr), int(optim_cfg.warmup_steps)
  wp0, wpe, kind = float(optim_cfg.warmup_start), float(optim_cfg.final_lr_frac), optim_cfg.schedule

  def schedule(it):
    it = jnp.asarray(it, jnp.float32)
    warm = wp0 + (1 - wp0) * it / max(warmup, 1)
    passed = jnp.clip((it - warmup) / max(steps - 1 - warmup, 1), 0, 1)  # 0 -> 1 after warmup, then held
    if kind == 'cos':
      after = wpe + (1 - wpe) * (0.5 + 0.5 * jnp.cos(math.pi * passed))
    else:
      hold = _HOLD[kind]
      after = jnp.where(passed < hold, 1.0, wpe + (1 - wpe) * (1 - passed) / (1 - hold))
    return peak * jnp.where(it < warmup, warm, after)

  return schedule


def wd_schedule(optim_cfg: Any, steps: int) -> optax.Schedule:
  """Weight decay per step: cosine from `weight_decay` to `weight_decay_end` over the run, then held."""
  wd, wd_end = float(optim_cfg.weight_decay), float(optim_cfg.weight_decay_end)

  def schedule(it):
    passed = jnp.clip(jnp.asarray(it, jnp.float32) / max(steps - 1, 1), 0, 1)
    return wd_end + (wd - wd_end) * (0.5 + 0.5 * jnp.cos(math.pi * passed))

  return schedule


def _path_name(path) -> str:
  return '/'.join(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path)


def decay_mask(params: Any, logical_specs: Any = None) -> Any:
  """True where weight decay applies: matrices and kernels, except the official no-decay names.

  `logical_specs` (a tree of logical PartitionSpecs) lets a scanned block's stacked 'layers' axis
  not count towards a parameter's rank, so a per-layer vector stays a vector.
  """
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  specs = [None] * len(flat) if logical_specs is None else treedef.flatten_up_to(logical_specs)
  mask = []
  for (path, p), spec in zip(flat, specs):
    rank = p.ndim - sum(1 for axis in (spec or ()) if axis == 'layers')
    mask.append(rank > 1 and not any(k in _path_name(path) for k in NO_DECAY_KEYS))
  return jax.tree_util.tree_unflatten(treedef, mask)


def make_optimizer(optim_cfg: Any, steps: int,
                   logical_specs: Any = None) -> optax.GradientTransformation:
  """clip -> Adam(b1, b2) -> masked decoupled weight decay -> -lr, as torch AdamW with clipping."""
  parts = []
  if optim_cfg.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(optim_cfg.grad_clip))
  parts += [
      optax.scale_by_adam(b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps),
      optax.add_decayed_weights(wd_schedule(optim_cfg, steps),
                                mask=lambda p: decay_mask(p, logical_specs)),
      optax.scale_by_learning_rate(lr_schedule(optim_cfg, steps)),
  ]
  return optax.chain(*parts)


def opt_state_shardings(tx: optax.GradientTransformation, abstract_params: Any,
                        param_shardings: Any, replicated: Any) -> Any:
  """Optimizer-state shardings: moments follow their parameter, counters are replicated."""
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  return optax.tree_map_params(
      tx, lambda _, sharding: sharding, abstract_opt, param_shardings,
      transform_non_params=lambda _: replicated)
