"""`task = 'next_token'`: the raster-order baseline (var_jax.models.next_token) on a frozen single-scale tokenizer.

The same harness as `task = 'var'` (`var_jax.train.frozen_tokenizer`: the tokenizer group, batches, frozen
tokenizer, steps), with the next-token model: a batch of images is tokenized in the step by the frozen
VQVAE whose `patch_nums = (n,)` (one n x n map), or pre-tokenized `{'tokens': i32[B, n²]}`; the loss is
next-token cross-entropy over the n² positions. Sizes and FLOPs are `var_jax.flops`'s closed forms with
`order='raster'`.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_dict

from var_jax.models import next_token as next_token_lib
from var_jax.train import frozen_tokenizer
from var_jax.weights import vqvae

PATCH_NUMS = (16,)


def tokens(tokenizer, tok_params, batch: dict) -> jax.Array:
  """(B, n²) target tokens in raster order, from images or pre-tokenized batches."""
  if 'tokens' in batch:
    return batch['tokens']
  idx_list = tokenizer.apply({'params': tok_params}, batch['image'], method='img_to_idx')
  return jax.lax.stop_gradient(idx_list[0])


class NextTokenTask(frozen_tokenizer.FrozenTokenizerTask):
  """Raster next-token training on a frozen single-scale tokenizer (as task 'var').

  Other single-map orderings (tasks/maskgit.py) take its config groups with their own network and FLOP order
  (`model_type`, `resolve_model`, `order`) and their own steps.
  """

  name = 'next_token'
  console_keys = ('loss', 'acc', 'lr', 'grad_norm')
  summary_keys = ('loss', 'acc')
  model_type, order = next_token_lib.NextToken, 'raster'
  FITS = (('vocab_size', 'vocab_size'), ('patch_nums', 'patch_nums'))  # the model reads one map
  resolve_model = staticmethod(next_token_lib.resolve)

  @classmethod
  def default_config(cls) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # NextToken (or MaskGIT) attributes (var_jax.models.next_token); None width/heads/drop-path follow depth.
    c.model = ml_collections.ConfigDict(dict(
        vocab_size=4096, patch_nums=PATCH_NUMS, num_classes=1000, depth=16,
        embed_dim=config_dict.placeholder(int), num_heads=config_dict.placeholder(int), mlp_ratio=4.0,
        norm_eps=1e-6, shared_aln=False, attn_l2_norm=True, cond_drop_rate=0.1,
        drop_path_rate=config_dict.placeholder(float), dtype='float32', scan_layers=True,
        remat_policy='none', attention='auto'))
    c.tokenizer = vqvae.config_group()
    c.tokenizer.patch_nums = PATCH_NUMS
    c.optim = ml_collections.ConfigDict(dict(label_smoothing=0.0))
    return c

  def init_params(self, key: jax.Array, start: Any = None) -> Any:
    if start is not None:
      return start
    label, idx = jnp.zeros((1,), jnp.int32), jnp.zeros((1, self.model.seq_len), jnp.int32)
    return self.model.init({'params': key, 'dropout': key}, label, idx, train=False)['params']

  def targets_and_inputs(self, tok_params, batch):
    idx_BL = tokens(self.tokenizer, tok_params, batch)
    return idx_BL, idx_BL


TASK = NextTokenTask
