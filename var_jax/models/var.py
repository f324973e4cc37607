"""The VAR transformer (next-scale prediction), term for term as the official PyTorch model.

Layout of one forward pass (teacher forcing), for K scales with token counts l_k = pn_k²:

  start token   class_emb[label] + pos_start                       (B, l_0, C)
  other tokens  word_embed(x_BLCvae)                                (B, L - l_0, C)
  + lvl_embed[scale of each position] + pos_embed                   (L, C)
  depth x AdaLN block (block-causal attention, tanh-GELU FFN)
  AdaLN-before-head and head in float32                            -> logits_BLV

The AdaLN conditioning is the class embedding itself (`cond_BD`, D = C). Blocks run under `nn.scan` with
their params stacked on a leading 'layers' axis (or unrolled, `scan_layers=False`, as `blocks_0`,
`blocks_1`, ...; `stack_layers` / `unstack_layers` convert between the two trees).

Remat policies (`remat_policy`): 'none' (store every activation), 'full' (recompute the whole block in the
backward pass), 'dots_saveable' (keep matmul outputs, recompute the rest), 'dots_no_batch' (keep only
matmul outputs without batch dimensions, i.e. weight-only products).

Attention (`attention`): a path of var_jax.models.attention ('xla' is the dense-mask reference,
'grouped', 'cudnn', 'tokamax', 'splash' skip masked work), or 'auto' to pick one for the device and
dtype. Every path gives the same result up to float summation order.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from var_jax import errors
from var_jax.models import attention as attention_lib
from var_jax.models import transformer
from var_jax.models.transformer import DTYPES

_FIELDS = ('vocab_size', 'cvae', 'patch_nums', 'num_classes', 'depth', 'embed_dim', 'num_heads',
           'mlp_ratio', 'norm_eps', 'shared_aln', 'attn_l2_norm', 'cond_drop_rate', 'drop_path_rate',
           'dtype', 'scan_layers', 'remat_policy', 'attention')


def resolve(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
  """VAR attributes from a config, with the official depth rule for the fields left None or missing.

  embed_dim = 64 * depth, num_heads = depth, drop_path_rate = 0.1 * depth / 24. Accepts a dict or a
  ConfigDict; returns a plain dict usable as `VAR(**resolve(cfg))`.
  """
  out = transformer.resolve_attributes(VAR, _FIELDS, model_cfg, 'VAR')
  _validate(out)
  return out


def _validate(a: Mapping[str, Any]) -> None:
  transformer.validate(a)
  if not a['patch_nums'] or any(p <= 0 for p in a['patch_nums']):
    raise errors.ConfigError(f"model.patch_nums={a['patch_nums']} must be positive scale sizes")


def scale_bounds(patch_nums: Sequence[int]) -> list[tuple[int, int]]:
  """[(begin, end)] of each scale's tokens in the concatenated sequence."""
  ends = np.cumsum([p * p for p in patch_nums])
  return [(int(e - p * p), int(e)) for p, e in zip(patch_nums, ends)]


def check_labels(label_B, num_classes: int, *, allow_uncond: bool = True, what: str = '') -> None:
  """ConfigError (prefixed `what: ` when given, e.g. a flag) for labels outside [0, num_classes]
  (num_classes = unconditional) on host values."""
  if isinstance(label_B, jax.core.Tracer):
    return
  label_B = np.asarray(label_B)
  prefix = f'{what}: ' if what else ''
  if not np.issubdtype(label_B.dtype, np.integer):
    raise errors.ConfigError(f'{prefix}labels must be integers, got dtype {label_B.dtype}')
  hi = num_classes if allow_uncond else num_classes - 1
  if label_B.size and (label_B.min() < 0 or label_B.max() > hi):
    raise errors.ConfigError(f'{prefix}labels must be in [0, {hi}] (num_classes={num_classes}), got values in '
                             f'[{label_B.min()}, {label_B.max()}]')


class VAR(nn.Module):
  """VAR transformer. See the module docstring; attributes are the `config.model` keys."""
  vocab_size: int = 4096
  cvae: int = 32
  patch_nums: Sequence[int] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
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

  # ---- static structure -------------------------------------------------------------------------

  @property
  def seq_len(self) -> int:
    return sum(p * p for p in self.patch_nums)

  @property
  def first_l(self) -> int:
    return self.patch_nums[0] ** 2

  def level_ids(self) -> np.ndarray:
    """Scale index of every position, (L,) int32."""
    return attention_lib.level_ids(self.patch_nums)

  def block_causal_mask(self) -> np.ndarray:
    """(L, L) bool: position i may attend to j iff scale(j) <= scale(i) (the 'xla' path's mask)."""
    return attention_lib.block_causal_mask(self.patch_nums)

  def kv_cache_shape(self, batch: int) -> tuple[int, ...]:
    """Shape of one of the (k, v) decoding buffers: (depth, batch, L, heads, head_dim)."""
    return (self.depth, batch, self.seq_len, self.num_heads, self.embed_dim // self.num_heads)

  # ---- modules ----------------------------------------------------------------------------------

  def setup(self):
    _validate({f: getattr(self, f) for f in _FIELDS})
    C, pn = self.embed_dim, tuple(self.patch_nums)
    std = math.sqrt(1 / (3 * C))
    self._cdtype = DTYPES[self.dtype]
    self.word_embed = transformer.Linear((C,), (None, 'embed'), std, name='word_embed')
    self.class_emb = transformer.param(self, 'class_emb', transformer.trunc_normal(std),
                                       (self.num_classes + 1, C), (None, 'embed'))
    self.pos_start = transformer.param(self, 'pos_start', transformer.trunc_normal(std), (pn[0] ** 2, C),
                                       (None, 'embed'))
    self.pos_embed = transformer.param(self, 'pos_embed', transformer.trunc_normal(std), (self.seq_len, C),
                                       (None, 'embed'))
    self.lvl_embed = transformer.param(self, 'lvl_embed', transformer.trunc_normal(std), (len(pn), C),
                                       (None, 'embed'))
    if self.shared_aln:
      self.shared_ada_lin = transformer.Linear((6, C), ('embed', None, None), std, name='shared_ada_lin')
    self.blocks = transformer.make_blocks(
        depth=self.depth, scan_layers=self.scan_layers, remat_policy=self.remat_policy, embed_dim=C,
        num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, norm_eps=self.norm_eps,
        shared_aln=self.shared_aln, attn_l2_norm=self.attn_l2_norm,
        use_drop_path=self.drop_path_rate > 0, attention=self.attention, patch_nums=pn,
        dtype=self._cdtype)
    self.head_nm, self.head = transformer.head_layers(C, self.vocab_size)

  def _run_blocks(self, x_BLC, cond_BD, kv, train, start):
    cond = self.shared_ada_lin(nn.silu(cond_BD)) if self.shared_aln else cond_BD
    return transformer.run_blocks(self.blocks, x_BLC, cond, depth=self.depth,
                                  drop_rate=self.drop_path_rate, kv=kv, train=train, start=start)

  def _logits(self, x_BLC, cond_BD):
    return transformer.adaln_logits(self.head_nm, self.head, x_BLC, cond_BD, self.norm_eps)

  def _lvl_pos(self, begin: int, end: int):
    lvl = jnp.asarray(self.level_ids()[begin:end])
    return self.lvl_embed[lvl] + self.pos_embed[begin:end]

  # ---- teacher forcing --------------------------------------------------------------------------

  def __call__(self, label_B, x_BLC, train: bool = False):
    """Logits for every position. label_B int (B,), x_BLC (B, L - l_0, cvae) -> logits (B, L, V) f32."""
    L, first_l = self.seq_len, self.first_l
    if x_BLC.ndim != 3 or x_BLC.shape[1:] != (L - first_l, self.cvae):
      raise errors.ConfigError(f'VAR input must be (B, {L - first_l}, {self.cvae}) for patch_nums='
                       f'{tuple(self.patch_nums)} and cvae={self.cvae}, got {tuple(x_BLC.shape)}')
    if label_B.shape != (x_BLC.shape[0],):
      raise errors.ConfigError(f'labels must be ({x_BLC.shape[0]},), got {tuple(label_B.shape)}')
    check_labels(label_B, self.num_classes)
    B = x_BLC.shape[0]
    if train and self.cond_drop_rate > 0:
      drop_B = jax.random.uniform(self.make_rng('dropout'), (B,)) < self.cond_drop_rate
      label_B = jnp.where(drop_B, self.num_classes, label_B)
    cond_BD = self.class_emb[label_B]
    sos_BlC = cond_BD[:, None, :] + self.pos_start[None]
    h_BLC = jnp.concatenate([sos_BlC, self.word_embed(x_BLC.astype(jnp.float32))], axis=1)
    h_BLC = (h_BLC + self._lvl_pos(0, L)[None]).astype(self._cdtype)
    h_BLC = nn.with_logical_constraint(h_BLC, ('batch', 'length', 'embed'))
    h_BLC, _ = self._run_blocks(h_BLC, cond_BD, None, train, 0)
    return self._logits(h_BLC, cond_BD)

  # ---- cached decoding (used by sampling.py) ----------------------------------------------------

  def first_tokens(self, label_B):
    """Scale-0 tokens and conditioning: (x_BlC = class_emb + pos_start + lvl/pos, cond_BD)."""
    cond_BD = self.class_emb[label_B]
    x_BlC = cond_BD[:, None, :] + self.pos_start[None] + self._lvl_pos(0, self.first_l)[None]
    return x_BlC, cond_BD

  def embed_scale(self, k: int, f_BlCvae):
    """Input tokens of scale k (> 0) from the tokenizer's next-scale feature map, (B, l_k, C)."""
    begin, end = scale_bounds(self.patch_nums)[k]
    return self.word_embed(f_BlCvae.astype(jnp.float32)) + self._lvl_pos(begin, end)[None]

  def decode_scale(self, k: int, x_BlC, cond_BD, kv):
    """Runs scale k's tokens through the blocks with the KV cache; returns (logits_BlV, kv)."""
    start = scale_bounds(self.patch_nums)[k][0]
    h_BlC, kv = self._run_blocks(x_BlC.astype(self._cdtype), cond_BD, kv, False, start)
    return self._logits(h_BlC, cond_BD), kv


def stack_layers(params: Mapping[str, Any], depth: int) -> dict[str, Any]:
  """Unrolled tree (blocks_0 ... blocks_{depth-1}) -> scanned tree ('blocks' with a leading axis)."""
  params = dict(params)
  layers = [params.pop(f'blocks_{i}') for i in range(depth)]
  params['blocks'] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
  return params


def unstack_layers(params: Mapping[str, Any]) -> dict[str, Any]:
  """Scanned tree -> unrolled tree."""
  params = dict(params)
  stacked = params.pop('blocks')
  depth = jax.tree.leaves(stacked)[0].shape[0]
  for i in range(depth):
    params[f'blocks_{i}'] = jax.tree.map(lambda x, i=i: x[i], stacked)
  return params
