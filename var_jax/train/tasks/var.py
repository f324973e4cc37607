"""`task = 'var'`: the VAR transformer trained by next-scale prediction on a frozen tokenizer's tokens.

A batch is either images `{'image': f32[B,H,W,3], 'label': i32[B]}`, tokenized in the step by the frozen
tokenizer, or pre-tokenized `{'tokens': i32[B,L], 'label': i32[B]}` (scales concatenated). Either way the
teacher-forcing input comes from the tokenizer's codebook and phi convolutions, so the tokenizer's params are
the state's `frozen` part (`var_jax.train.frozen_tokenizer`). Sizes and FLOPs are `var_jax.flops`'s closed forms.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from ml_collections import config_dict

from var_jax.models import var as var_lib
from var_jax.train import finetune
from var_jax.train import frozen_tokenizer
from var_jax.train import task as task_lib
from var_jax.weights import vqvae


def split_scales(idx_BL: jax.Array, patch_nums) -> list[jax.Array]:
  """[B, sum pn²] -> one [B, pn²] per scale."""
  bounds = np.cumsum([p * p for p in patch_nums[:-1]]).tolist()
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


class VarTask(frozen_tokenizer.FrozenTokenizerTask):
  """VAR training; the tokenizer (`tokenizer.path`, or random from `tokenizer.seed`) is frozen."""

  name = 'var'
  console_keys = ('loss', 'loss_last_scale', 'acc', 'lr', 'grad_norm')
  summary_keys = ('loss', 'loss_last_scale', 'acc')
  model_type, order = var_lib.VAR, 'next_scale'
  FITS = (('vocab_size', 'vocab_size'), ('cvae', 'z_channels'), ('patch_nums', 'patch_nums'))
  resolve_model = staticmethod(var_lib.resolve)

  @classmethod
  def default_config(cls) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # VAR attributes (var_jax.models.var.VAR); None width/heads/drop-path follow model.depth.
    c.model = ml_collections.ConfigDict(dict(
        vocab_size=4096, cvae=32, patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16), num_classes=1000,
        depth=16, embed_dim=config_dict.placeholder(int), num_heads=config_dict.placeholder(int),
        mlp_ratio=4.0, norm_eps=1e-6, shared_aln=False, attn_l2_norm=True, cond_drop_rate=0.1,
        drop_path_rate=config_dict.placeholder(float), dtype='float32', scan_layers=True, remat_policy='none',
        attention='auto'))
    c.tokenizer = vqvae.config_group()
    c.optim = ml_collections.ConfigDict(dict(label_smoothing=0.0))
    # Fine-tuning: params (not optimizer state) from an official state dict or a var_jax run folder before
    # step 0 (var_jax.train.finetune); a resumed run restores its own checkpoints instead.
    c.init = ml_collections.ConfigDict(dict(path=config_dict.placeholder(str)))
    return c

  def init_params(self, key: jax.Array, start: Any = None) -> Any:
    L = self.model.seq_len - self.model.first_l
    label = jnp.zeros((1,), jnp.int32)
    x_BLC = jnp.zeros((1, L, self.model.cvae), jnp.float32)
    fresh = self.model.init({'params': key, 'dropout': key}, label, x_BLC, train=False)['params']
    return finetune.merge(fresh, start)

  def start_params(self) -> task_lib.Start | None:
    if not self.config.init.path:
      return None
    return task_lib.Start(*finetune.load(str(self.config.init.path), self.model, self.abstract_params))

  def targets_and_inputs(self, tok_params, batch):
    return teacher_forcing(self.tokenizer, tok_params, batch, self.patch_nums)


TASK = VarTask
