"""Masked parallel decoding (MaskGIT): a bidirectional transformer over one token map, and its masking.

The network is the next-token baseline's (var_jax.models.next_token) with the causal mask removed: the
same AdaLN blocks, width rule, class-embedding AdaLN and head (var_jax.models.transformer), over one
n x n map of L = n² tokens (`patch_nums = (n,)`, the single-scale tokenizer's). Every position sees
every other (the block-causal mask with a single block), and a position whose token is unknown holds
the [MASK] token, id `vocab_size` (the embedding table has vocab_size + 1 rows; the head predicts the
vocab_size real codes):

  tok_embed[idx_BL] + pos_embed                                     (B, L, C)   idx may be MASK_ID
  depth x AdaLN block (class condition, no attention mask)
  AdaLN-before-head and head in float32                             -> logits_BLV at every position

Training (as MaskGIT): per image a ratio r ~ U[0, 1), ceil(gamma(r) L) of its tokens masked at random
with the cosine schedule gamma(r) = cos(pi r / 2), and cross-entropy on the masked positions only
(`loss.masked_loss`). Class dropout (`cond_drop_rate`) replaces the label by the unconditional class
`num_classes` for classifier-free guidance. Decoding is var_jax.models.maskgit_sampling.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from var_jax import errors
from var_jax.models import next_token as next_token_lib
from var_jax.models import transformer
from var_jax.models import var as var_lib


def resolve(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
  """MaskGIT attributes from a config (dict or ConfigDict), the depth rule filling the width fields left
  None; ValueError for unknown keys or values that cannot build. The keys are the next-token model's."""
  out = transformer.resolve_attributes(MaskGIT, next_token_lib.FIELDS, model_cfg, 'MaskGIT')
  next_token_lib.validate(out)
  return out


# ---- the mask schedule and random masks -----------------------------------------------------------


def mask_schedule(ratio):
  """gamma(r) = cos(pi r / 2): the fraction of tokens masked at progress r in [0, 1] (1 at r = 0, 0 at 1)."""
  return jnp.cos(0.5 * math.pi * jnp.asarray(ratio, jnp.float32))


def masked_count(ratio_B, seq_len: int):
  """Tokens to mask per row at training ratios r: ceil(gamma(r) L), at least 1 and at most L, int32 (B,)."""
  count_B = jnp.ceil(mask_schedule(ratio_B) * seq_len).astype(jnp.int32)
  return jnp.clip(count_B, 1, seq_len)


def train_ratios(rng: jax.Array, batch: int):
  """Training ratios, r ~ U[0, 1) per row."""
  return jax.random.uniform(rng, (batch,))


def eval_ratios(batch: int):
  """Evaluation ratios, stratified over [0, 1): row b gets (b + 1/2) / B, so a batch covers the schedule
  evenly and the eval loss needs no key of its own."""
  return (jnp.arange(batch, dtype=jnp.float32) + 0.5) / batch


def random_mask(rng: jax.Array, count_B, seq_len: int):
  """(B, L) bool with exactly count_B[b] positions set in row b, uniformly at random."""
  scores_BL = jax.random.uniform(rng, (count_B.shape[0], seq_len))
  rank_BL = jnp.argsort(jnp.argsort(scores_BL, axis=-1), axis=-1)
  return rank_BL < count_B[:, None]


def apply_mask(idx_BL, mask_BL, mask_id: int):
  """The network's input: idx_BL with MASK_ID where mask_BL is set."""
  return jnp.where(mask_BL, mask_id, idx_BL).astype(jnp.int32)


# ---- the network ----------------------------------------------------------------------------------


class MaskGIT(nn.Module):
  """Bidirectional single-map transformer; attributes are the `config.model` keys of task 'maskgit'."""
  vocab_size: int = 4096
  patch_nums: Sequence[int] = (16,)
  num_classes: int = 1000
  depth: int = 16
  embed_dim: int = 1024
  num_heads: int = 16
  mlp_ratio: float = 4.0
  norm_eps: float = 1e-6
  shared_aln: bool = False
  attn_l2_norm: bool = True
  cond_drop_rate: float = 0.1
  drop_path_rate: float = 0.0
  dtype: str = 'float32'
  scan_layers: bool = True
  remat_policy: str = 'none'
  attention: str = 'auto'

  @property
  def seq_len(self) -> int:
    return self.patch_nums[0] ** 2

  @property
  def mask_id(self) -> int:
    """The [MASK] token: the row after the real codes in `tok_embed`."""
    return self.vocab_size

  def setup(self):
    next_token_lib.validate({f: getattr(self, f) for f in next_token_lib.FIELDS})
    C, L = self.embed_dim, self.seq_len
    init = transformer.trunc_normal(math.sqrt(1 / (3 * C)))
    self.tok_embed = transformer.param(self, 'tok_embed', init, (self.vocab_size + 1, C), (None, 'embed'))
    self.class_emb = transformer.param(self, 'class_emb', init, (self.num_classes + 1, C), (None, 'embed'))
    self.pos_embed = transformer.param(self, 'pos_embed', init, (L, C), (None, 'embed'))
    transformer.setup_trunk(self, tuple(self.patch_nums))  # one block of n² tokens: no mask

  def __call__(self, label_B, idx_BL, train: bool = False):
    """Logits for every position: label_B int (B,), idx_BL int (B, L) with MASK_ID where unknown ->
    (B, L, V) f32. Every position sees the class and every token of the map."""
    L = self.seq_len
    if idx_BL.ndim != 2 or idx_BL.shape[1] != L:
      raise errors.ConfigError(f'MaskGIT input must be (B, {L}) token indices for patch_nums='
                       f'{tuple(self.patch_nums)}, got {tuple(idx_BL.shape)}')
    if label_B.shape != (idx_BL.shape[0],):
      raise errors.ConfigError(f'labels must be ({idx_BL.shape[0]},), got {tuple(label_B.shape)}')
    var_lib.check_labels(label_B, self.num_classes)
    if train and self.cond_drop_rate > 0:
      drop_B = jax.random.uniform(self.make_rng('dropout'), label_B.shape) < self.cond_drop_rate
      label_B = jnp.where(drop_B, self.num_classes, label_B)
    cond_BD = self.class_emb[label_B]
    h_BLC = self.tok_embed[idx_BL] + self.pos_embed[None]
    h_BLC = nn.with_logical_constraint(h_BLC, ('batch', 'length', 'embed'))
    return transformer.run_trunk(self, h_BLC, cond_BD, kv=None, train=train, start=0)[0]
