"""The next-token (raster) baseline: VAR's AdaLN transformer on one token map in raster order.

Only the ordering differs from VAR (var_jax.models.var): the same blocks, width rule (embed_dim = 64 d,
heads = d), AdaLN conditioning on the class embedding and AdaLN head (var_jax.models.transformer). The
tokens are one n x n map (`patch_nums = (n,)`, the single-scale tokenizer's), L = n² of them in raster
order, and position i predicts token i from the tokens before it:

  start token   class_emb[label] + pos_start                      (B, 1, C)
  other tokens  tok_embed[idx_0 .. idx_{L-2}]                      (B, L - 1, C)
  + pos_embed                                                      (L, C)
  depth x AdaLN block (causal attention: the block-causal mask with one token per block)
  AdaLN-before-head and head in float32                            -> logits_BLV

The previous tokens enter through a learned embedding table (as ImageGPT and LlamaGen), since there is
no coarser map to upsample. Class dropout (`cond_drop_rate`) replaces the label by the unconditional
class `num_classes` for classifier-free guidance.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from var_jax import errors
from var_jax.models import transformer
from var_jax.models import var as var_lib

FIELDS = ('vocab_size', 'patch_nums', 'num_classes', 'depth', 'embed_dim', 'num_heads', 'mlp_ratio',
           'norm_eps', 'shared_aln', 'attn_l2_norm', 'cond_drop_rate', 'drop_path_rate', 'dtype',
           'scan_layers', 'remat_policy', 'attention')


def resolve(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
  """NextToken attributes from a config (dict or ConfigDict), with VAR's depth rule for the fields
  left None or missing; ConfigError for unknown keys or values that cannot build."""
  out = transformer.resolve_attributes(NextToken, FIELDS, model_cfg, 'next-token')
  validate(out)
  return out


def validate(a: Mapping[str, Any]) -> None:
  transformer.validate(a)
  if len(a['patch_nums']) != 1 or a['patch_nums'][0] <= 0:
    raise errors.ConfigError(f"model.patch_nums={a['patch_nums']} must be one positive map side (n,) for a "
                             'single-map model (next-token, MaskGIT)')


def causal_blocks(seq_len: int) -> tuple[int, ...]:
  """The block sizes that make the block-causal mask causal: one token per block."""
  return (1,) * seq_len


class NextToken(nn.Module):
  """Raster-order autoregressive transformer; attributes are the `config.model` keys of task 'next_token'."""
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

  def kv_cache_shape(self, batch: int) -> tuple[int, ...]:
    """Shape of one of the (k, v) decoding buffers: (depth, batch, L, heads, head_dim)."""
    return (self.depth, batch, self.seq_len, self.num_heads, self.embed_dim // self.num_heads)

  def setup(self):
    validate({f: getattr(self, f) for f in FIELDS})
    C, L = self.embed_dim, self.seq_len
    init = transformer.trunc_normal(math.sqrt(1 / (3 * C)))
    self.tok_embed = transformer.param(self, 'tok_embed', init, (self.vocab_size, C), ('vocab', 'embed'))
    self.class_emb = transformer.param(self, 'class_emb', init, (self.num_classes + 1, C), (None, 'embed'))
    self.pos_start = transformer.param(self, 'pos_start', init, (1, C), (None, 'embed'))
    self.pos_embed = transformer.param(self, 'pos_embed', init, (L, C), (None, 'embed'))
    transformer.setup_trunk(self, causal_blocks(L))

  def _trunk(self, h_BLC, cond_BD, kv, train, start):
    return transformer.run_trunk(self, h_BLC, cond_BD, kv=kv, train=train, start=start)

  # ---- teacher forcing --------------------------------------------------------------------------

  def __call__(self, label_B, idx_BL, train: bool = False):
    """Logits for every position: label_B int (B,), idx_BL int (B, L) the whole map -> (B, L, V) f32.

    Position i sees the class and idx_BL[:, :i]; the last token is only a target.
    """
    L = self.seq_len
    if idx_BL.ndim != 2 or idx_BL.shape[1] != L:
      raise errors.ConfigError(f'next-token input must be (B, {L}) token indices for patch_nums='
                       f'{tuple(self.patch_nums)}, got {tuple(idx_BL.shape)}')
    if label_B.shape != (idx_BL.shape[0],):
      raise errors.ConfigError(f'labels must be ({idx_BL.shape[0]},), got {tuple(label_B.shape)}')
    var_lib.check_labels(label_B, self.num_classes)
    if train and self.cond_drop_rate > 0:
      drop_B = jax.random.uniform(self.make_rng('dropout'), label_B.shape) < self.cond_drop_rate
      label_B = jnp.where(drop_B, self.num_classes, label_B)
    cond_BD = self.class_emb[label_B]
    sos_B1C = cond_BD[:, None, :] + self.pos_start[None]
    h_BLC = jnp.concatenate([sos_B1C, self.tok_embed[idx_BL[:, :-1]]], axis=1) + self.pos_embed[None]
    h_BLC = nn.with_logical_constraint(h_BLC, ('batch', 'length', 'embed'))
    return self._trunk(h_BLC, cond_BD, None, train, 0)[0]

  # ---- cached decoding (one token per step; used by next_token_sampling.py) ---------------------

  def first_token(self, label_B):
    """(x_B1C the start token with its position, cond_BD)."""
    cond_BD = self.class_emb[label_B]
    return cond_BD[:, None, :] + self.pos_start[None] + self.pos_embed[None, :1], cond_BD

  def embed_token(self, i, idx_B):
    """Input at position i (traced, >= 1) for the token sampled at position i - 1: (B, 1, C)."""
    pos_1C = jax.lax.dynamic_slice_in_dim(self.pos_embed, i, 1, axis=0)
    return self.tok_embed[idx_B][:, None, :] + pos_1C[None]

  def decode_token(self, i, x_B1C, cond_BD, kv):
    """Position i's input through the blocks with the KV cache; returns (logits_B1V, kv).

    i may be traced (a token loop), which needs remat_policy 'none' (remat takes `start` as static).
    """
    return self._trunk(x_B1C, cond_BD, kv, False, i)
