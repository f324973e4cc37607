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

from var_jax.models import activations
from var_jax.models import attention as attention_lib

# Official `build_vae_var` / `init_weights` defaults.
INIT_ADALN = 0.5
INIT_ADALN_GAMMA = 1e-5
INIT_HEAD = 0.02
INIT_SCALE_MUL = math.log(4.0)
MAX_SCALE_MUL = math.log(100.0)

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
REMAT_POLICIES = {
    'full': None,
    'dots_saveable': jax.checkpoint_policies.dots_saveable,
    'dots_no_batch': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


_FIELDS = ('vocab_size', 'cvae', 'patch_nums', 'num_classes', 'depth', 'embed_dim', 'num_heads',
           'mlp_ratio', 'norm_eps', 'shared_aln', 'attn_l2_norm', 'cond_drop_rate', 'drop_path_rate',
           'dtype', 'scan_layers', 'remat_policy', 'attention')


def resolve(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
  """VAR attributes from a config, with the official depth rule for the fields left None or missing.

  embed_dim = 64 * depth, num_heads = depth, drop_path_rate = 0.1 * depth / 24. Accepts a dict or a
  ConfigDict; returns a plain dict usable as `VAR(**resolve(cfg))`.
  """
  cfg = dict(model_cfg.to_dict() if hasattr(model_cfg, 'to_dict') else model_cfg)
  unknown = sorted(set(cfg) - set(_FIELDS))
  if unknown:
    raise ValueError(f'model config: unknown keys {unknown}; VAR attributes are {list(_FIELDS)}')
  depth = cfg.get('depth') or VAR.depth
  rule = {'embed_dim': 64 * depth, 'num_heads': depth, 'drop_path_rate': 0.1 * depth / 24}
  for key, value in rule.items():
    if cfg.get(key) is None:
      cfg[key] = value
  out = {f: getattr(VAR, f) for f in _FIELDS}
  out.update({k: v for k, v in cfg.items() if v is not None})
  out['depth'] = depth
  out['patch_nums'] = tuple(int(p) for p in out['patch_nums'])
  _validate(out)
  return out


def _validate(a: Mapping[str, Any]) -> None:
  if a['embed_dim'] % a['num_heads']:
    raise ValueError(f"model.embed_dim={a['embed_dim']} must be divisible by num_heads={a['num_heads']}")
  if a['dtype'] not in DTYPES:
    raise ValueError(f"model.dtype={a['dtype']!r}; expected one of {sorted(DTYPES)}")
  if a['remat_policy'] != 'none' and a['remat_policy'] not in REMAT_POLICIES:
    raise ValueError(f"model.remat_policy={a['remat_policy']!r}; expected 'none' or one of "
                     f'{sorted(REMAT_POLICIES)}')
  if a['attention'] not in attention_lib.NAMES:
    raise ValueError(f"model.attention={a['attention']!r}; expected one of {sorted(attention_lib.NAMES)}")
  if not a['patch_nums'] or any(p <= 0 for p in a['patch_nums']):
    raise ValueError(f"model.patch_nums={a['patch_nums']} must be positive scale sizes")


def trunc_normal(std: float, scale: Any = 1.0):
  """torch `trunc_normal_(std=std)` (absolute bounds ±2) times `scale` (broadcast to the shape)."""
  def init(key, shape, dtype=jnp.float32):
    x = std * jax.random.truncated_normal(key, -2.0 / std, 2.0 / std, shape, jnp.float32)
    return (x * np.asarray(scale, np.float32)).astype(dtype)
  return init


def _param(module: nn.Module, name: str, init, shape, axes):
  return module.param(name, nn.with_logical_partitioning(init, axes), tuple(shape), jnp.float32)


def layer_norm(x, eps):
  """LayerNorm without affine, computed in float32 (torch `LayerNorm(elementwise_affine=False)`)."""
  x32 = x.astype(jnp.float32)
  mean = x32.mean(-1, keepdims=True)
  var = jnp.square(x32 - mean).mean(-1, keepdims=True)
  return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


def _l2_normalize(x, eps=1e-12):
  """torch `F.normalize(x, dim=-1)`: x / max(|x|, eps)."""
  x32 = x.astype(jnp.float32)
  norm = jnp.sqrt(jnp.sum(jnp.square(x32), -1, keepdims=True))
  return (x32 / jnp.maximum(norm, eps)).astype(x.dtype)


class Linear(nn.Module):
  """y = x @ kernel + bias, contracting the last `n_in` dims of x; kernel is (*in, *out_shape)."""
  out_shape: tuple[int, ...]
  axes: tuple[str | None, ...]  # logical names of the kernel dims
  std: float
  kernel_scale: Any = 1.0
  n_in: int = 1
  use_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    in_shape = x.shape[x.ndim - self.n_in:]
    kernel = _param(self, 'kernel', trunc_normal(self.std, self.kernel_scale),
                    (*in_shape, *self.out_shape), self.axes)
    y = jnp.tensordot(x.astype(self.dtype), kernel.astype(self.dtype), axes=self.n_in)
    if self.use_bias:
      bias = _param(self, 'bias', nn.initializers.zeros, self.out_shape, self.axes[self.n_in:])
      y = y + bias.astype(self.dtype)
    return y


def _adaln_row_scale(n_rows: int) -> tuple[tuple[float], ...]:
  """Official init: the gamma rows (first 2 of 6) x INIT_ADALN_GAMMA, scale/shift rows x INIT_ADALN.

  A (n_rows, 1) nested tuple (hashable, so it can be a module attribute) broadcasting over (.., 6, C).
  """
  return tuple((g,) for g in [INIT_ADALN_GAMMA] * 2 + [INIT_ADALN] * (n_rows - 2))


class Attention(nn.Module):
  """Self-attention with q/v biases (zero k bias) and optional per-head l2-norm scale."""
  embed_dim: int
  num_heads: int
  depth: int
  attn_l2_norm: bool
  attention: str
  patch_nums: tuple[int, ...]
  dtype: Any

  @nn.compact
  def __call__(self, x_BLC, kv, start):
    """kv: None (teacher forcing over the whole pyramid, block-causal) or (k_BSHD, v_BSHD) cache
    buffers written at [start, start + L) (decoding one scale: it sees the whole prefix)."""
    H, C = self.num_heads, self.embed_dim
    Dh = C // H
    std = math.sqrt(1 / (3 * C))
    qkv_BL3HD = Linear((3, H, Dh), ('embed', None, 'heads', 'kv'), std, use_bias=False,
                       dtype=self.dtype, name='qkv')(x_BLC)
    q_bias = _param(self, 'q_bias', nn.initializers.zeros, (H, Dh), ('heads', 'kv'))
    v_bias = _param(self, 'v_bias', nn.initializers.zeros, (H, Dh), ('heads', 'kv'))
    q_BLHD = qkv_BL3HD[:, :, 0] + q_bias.astype(self.dtype)
    k_BLHD = qkv_BL3HD[:, :, 1]
    v_BLHD = qkv_BL3HD[:, :, 2] + v_bias.astype(self.dtype)
    if self.attn_l2_norm:
      scale_mul_H = _param(self, 'scale_mul', nn.initializers.constant(INIT_SCALE_MUL), (H,),
                           ('heads',))
      gain_H = jnp.exp(jnp.minimum(scale_mul_H, MAX_SCALE_MUL))
      q_BLHD = (_l2_normalize(q_BLHD) * gain_H[:, None]).astype(self.dtype)
      k_BLHD = _l2_normalize(k_BLHD)
      scale = 1.0
    else:
      scale = 0.25 / math.sqrt(Dh)
    names = ('batch', 'length', 'heads', 'kv')
    q_BLHD = nn.with_logical_constraint(q_BLHD, names)
    k_BLHD = nn.with_logical_constraint(k_BLHD, names)
    v_BLHD = nn.with_logical_constraint(v_BLHD, names)
    patch_nums = self.patch_nums
    if kv is not None:
      patch_nums = None
      k_cache, v_cache = kv
      end = start + x_BLC.shape[1]
      k_cache = jax.lax.dynamic_update_slice_in_dim(k_cache, k_BLHD.astype(k_cache.dtype), start, 1)
      v_cache = jax.lax.dynamic_update_slice_in_dim(v_cache, v_BLHD.astype(v_cache.dtype), start, 1)
      kv = (k_cache, v_cache)
      # Every cached token belongs to this or an earlier scale: no mask needed.
      k_BLHD, v_BLHD = k_cache[:, :end], v_cache[:, :end]
    o_BLHD = attention_lib.attend(self.attention, q_BLHD, k_BLHD, v_BLHD, scale, patch_nums)
    o_BLHD = nn.with_logical_constraint(o_BLHD, names)
    out_BLC = Linear((C,), ('heads', 'kv', 'embed'), std, 1 / math.sqrt(2 * self.depth), n_in=2,
                     dtype=self.dtype, name='proj')(o_BLHD)
    return out_BLC, kv


class Block(nn.Module):
  """AdaLN self-attention block (official `AdaLNSelfAttn`)."""
  embed_dim: int
  num_heads: int
  depth: int
  mlp_ratio: float
  norm_eps: float
  shared_aln: bool
  attn_l2_norm: bool
  use_drop_path: bool
  attention: str
  patch_nums: tuple[int, ...]
  dtype: Any

  @nn.compact
  def __call__(self, x_BLC, cond, drop_rate, kv, train, start):
    """cond: (B, D) class embedding, or (B, 6, C) shared AdaLN output when shared_aln.

    Returns (x_BLC, kv) with kv the updated cache (None in training).
    """
    C = self.embed_dim
    std = math.sqrt(1 / (3 * C))
    if self.shared_aln:
      ada_gss = _param(self, 'ada_gss', _ada_gss_init(C), (6, C), (None, 'embed'))
      mods_B6C = (cond + ada_gss).astype(self.dtype)
    else:
      mods_B6C = Linear((6, C), ('embed', None, None), std, _adaln_row_scale(6), dtype=self.dtype,
                        name='ada_lin')(nn.silu(cond.astype(self.dtype)))
    gamma1, gamma2, scale1, scale2, shift1, shift2 = (mods_B6C[:, None, i] for i in range(6))

    def drop_path(y_BLC):
      if not (train and self.use_drop_path):
        return y_BLC
      keep = 1.0 - drop_rate
      keep_B11 = jax.random.bernoulli(self.make_rng('dropout'), keep, (y_BLC.shape[0], 1, 1))
      return y_BLC * (keep_B11 / keep).astype(y_BLC.dtype)

    h_BLC = layer_norm(x_BLC, self.norm_eps) * (scale1 + 1) + shift1
    h_BLC, kv = Attention(C, self.num_heads, self.depth, self.attn_l2_norm, self.attention,
                          self.patch_nums, self.dtype, name='attn')(h_BLC, kv, start)
    x_BLC = x_BLC + drop_path(h_BLC * gamma1)

    h_BLC = layer_norm(x_BLC, self.norm_eps) * (scale2 + 1) + shift2
    hidden = round(C * self.mlp_ratio)
    h_BLF = Linear((hidden,), ('embed', 'mlp'), std, dtype=self.dtype, name='fc1')(h_BLC)
    h_BLF = nn.with_logical_constraint(activations.gelu_tanh(h_BLF),
                                       ('batch', 'length', 'mlp'))
    h_BLC = Linear((C,), ('mlp', 'embed'), std, 1 / math.sqrt(2 * self.depth), dtype=self.dtype,
                   name='fc2')(h_BLF)
    x_BLC = x_BLC + drop_path(h_BLC * gamma2)
    return nn.with_logical_constraint(x_BLC, ('batch', 'length', 'embed')), kv


def _ada_gss_init(C):
  """Official: randn / sqrt(C), then the rows scaled as the AdaLN linear's."""
  def init(key, shape, dtype=jnp.float32):
    x = jax.random.normal(key, shape, jnp.float32) / math.sqrt(C)
    return (x * np.asarray(_adaln_row_scale(6), np.float32)).astype(dtype)
  return init


def scale_bounds(patch_nums: Sequence[int]) -> list[tuple[int, int]]:
  """[(begin, end)] of each scale's tokens in the concatenated sequence."""
  ends = np.cumsum([p * p for p in patch_nums])
  return [(int(e - p * p), int(e)) for p, e in zip(patch_nums, ends)]


def check_labels(label_B, num_classes: int, *, allow_uncond: bool = True) -> None:
  """ValueError for labels outside [0, num_classes] (num_classes = unconditional) on host values."""
  if isinstance(label_B, jax.core.Tracer):
    return
  label_B = np.asarray(label_B)
  if not np.issubdtype(label_B.dtype, np.integer):
    raise ValueError(f'labels must be integers, got dtype {label_B.dtype}')
  hi = num_classes if allow_uncond else num_classes - 1
  if label_B.size and (label_B.min() < 0 or label_B.max() > hi):
    raise ValueError(f'labels must be in [0, {hi}] (num_classes={num_classes}), got values in '
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
    self.word_embed = Linear((C,), (None, 'embed'), std, name='word_embed')
    self.class_emb = _param(self, 'class_emb', trunc_normal(std), (self.num_classes + 1, C),
                            (None, 'embed'))
    self.pos_start = _param(self, 'pos_start', trunc_normal(std), (pn[0] ** 2, C), (None, 'embed'))
    self.pos_embed = _param(self, 'pos_embed', trunc_normal(std), (self.seq_len, C), (None, 'embed'))
    self.lvl_embed = _param(self, 'lvl_embed', trunc_normal(std), (len(pn), C), (None, 'embed'))
    if self.shared_aln:
      self.shared_ada_lin = Linear((6, C), ('embed', None, None), std, name='shared_ada_lin')

    block_kw = dict(embed_dim=C, num_heads=self.num_heads, depth=self.depth,
                    mlp_ratio=self.mlp_ratio, norm_eps=self.norm_eps, shared_aln=self.shared_aln,
                    attn_l2_norm=self.attn_l2_norm, use_drop_path=self.drop_path_rate > 0,
                    attention=self.attention, patch_nums=pn, dtype=self._cdtype)
    block_cls = Block
    if self.remat_policy != 'none':
      # static_argnums count `self` as 0: (train, start) are arguments 5 and 6.
      block_cls = nn.remat(Block, policy=REMAT_POLICIES[self.remat_policy],
                           prevent_cse=not self.scan_layers, static_argnums=(5, 6))
    if self.scan_layers:
      self.blocks = nn.scan(
          block_cls, variable_axes={'params': 0}, split_rngs={'params': True, 'dropout': True},
          in_axes=(nn.broadcast, 0, 0, nn.broadcast, nn.broadcast),
          length=self.depth, metadata_params={nn.PARTITION_NAME: 'layers'})(**block_kw)
    else:
      self.blocks = [block_cls(**block_kw) for _ in range(self.depth)]
    self.head_nm = Linear((2, C), ('embed', None, None), std, INIT_ADALN, name='head_nm')
    self.head = Linear((self.vocab_size,), ('embed', 'vocab'), std, INIT_HEAD, name='head')

  def _run_blocks(self, x_BLC, cond_BD, kv, train, start):
    cond = self.shared_ada_lin(nn.silu(cond_BD)) if self.shared_aln else cond_BD
    drop_D = jnp.linspace(0.0, self.drop_path_rate, self.depth, dtype=jnp.float32)
    if self.scan_layers:
      return self.blocks(x_BLC, cond, drop_D, kv, train, start)
    new_kv = []
    for i, block in enumerate(self.blocks):
      layer_kv = None if kv is None else (kv[0][i], kv[1][i])
      x_BLC, layer_kv = block(x_BLC, cond, drop_D[i], layer_kv, train, start)
      new_kv.append(layer_kv)
    if kv is None:
      return x_BLC, None
    return x_BLC, tuple(jnp.stack([c[j] for c in new_kv]) for j in range(2))

  def _logits(self, x_BLC, cond_BD):
    """AdaLN-before-head and head, in float32."""
    mods_B2C = self.head_nm(nn.silu(cond_BD.astype(jnp.float32)))
    h_BLC = layer_norm(x_BLC.astype(jnp.float32), self.norm_eps)
    h_BLC = h_BLC * (mods_B2C[:, None, 0] + 1) + mods_B2C[:, None, 1]
    logits_BLV = self.head(h_BLC).astype(jnp.float32)
    return nn.with_logical_constraint(logits_BLV, ('batch', 'length', 'vocab'))

  def _lvl_pos(self, begin: int, end: int):
    lvl = jnp.asarray(self.level_ids()[begin:end])
    return self.lvl_embed[lvl] + self.pos_embed[begin:end]

  # ---- teacher forcing --------------------------------------------------------------------------

  def __call__(self, label_B, x_BLC, train: bool = False):
    """Logits for every position. label_B int (B,), x_BLC (B, L - l_0, cvae) -> logits (B, L, V) f32."""
    L, first_l = self.seq_len, self.first_l
    if x_BLC.ndim != 3 or x_BLC.shape[1:] != (L - first_l, self.cvae):
      raise ValueError(f'VAR input must be (B, {L - first_l}, {self.cvae}) for patch_nums='
                       f'{tuple(self.patch_nums)} and cvae={self.cvae}, got {tuple(x_BLC.shape)}')
    if label_B.shape != (x_BLC.shape[0],):
      raise ValueError(f'labels must be ({x_BLC.shape[0]},), got {tuple(label_B.shape)}')
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
