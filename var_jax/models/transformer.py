"""The AdaLN transformer trunk shared by VAR (next-scale) and the next-token baseline.

One block (official `AdaLNSelfAttn`): AdaLN-modulated self-attention and tanh-GELU FFN, each scaled by
its own AdaLN gamma, with the class condition giving the six modulation rows per block (or one shared
Linear and a per-block `ada_gss` when `shared_aln`). `make_blocks` builds the depth-`depth` stack under
`nn.scan` (params stacked on a leading 'layers' axis) or unrolled (`blocks_0`, `blocks_1`, ...), with an
optional remat policy; `run_blocks` runs it, `adaln_logits` is the AdaLN-before-head and the head.

The attention mask is given by `patch_nums`: scale k's tokens see every token of scales <= k
(block-causal). Raster next-token order is the same mask with one token per block, `(1,) * L`.
In cached decoding, `kv` holds (k, v) buffers written at [start, start + l): a Python-int `start`
slices the filled prefix (VAR, one scale per step); a traced `start` (a token loop under `lax.scan`)
masks the keys past the prefix instead.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from var_jax import errors
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


def trunc_normal(std: float, scale: Any = 1.0):
  """torch `trunc_normal_(std=std)` (absolute bounds ±2) times `scale` (broadcast to the shape)."""
  def init(key, shape, dtype=jnp.float32):
    x = std * jax.random.truncated_normal(key, -2.0 / std, 2.0 / std, shape, jnp.float32)
    return (x * np.asarray(scale, np.float32)).astype(dtype)
  return init


def param(module: nn.Module, name: str, init, shape, axes):
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
    kernel = param(self, 'kernel', trunc_normal(self.std, self.kernel_scale),
                    (*in_shape, *self.out_shape), self.axes)
    y = jnp.tensordot(x.astype(self.dtype), kernel.astype(self.dtype), axes=self.n_in)
    if self.use_bias:
      bias = param(self, 'bias', nn.initializers.zeros, self.out_shape, self.axes[self.n_in:])
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
    q_bias = param(self, 'q_bias', nn.initializers.zeros, (H, Dh), ('heads', 'kv'))
    v_bias = param(self, 'v_bias', nn.initializers.zeros, (H, Dh), ('heads', 'kv'))
    q_BLHD = qkv_BL3HD[:, :, 0] + q_bias.astype(self.dtype)
    k_BLHD = qkv_BL3HD[:, :, 1]
    v_BLHD = qkv_BL3HD[:, :, 2] + v_bias.astype(self.dtype)
    if self.attn_l2_norm:
      scale_mul_H = param(self, 'scale_mul', nn.initializers.constant(INIT_SCALE_MUL), (H,),
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
    if kv is None:
      o_BLHD = attention_lib.attend(self.attention, q_BLHD, k_BLHD, v_BLHD, scale, patch_nums)
    else:
      k_cache, v_cache = kv
      end = start + x_BLC.shape[1]
      k_cache = jax.lax.dynamic_update_slice_in_dim(k_cache, k_BLHD.astype(k_cache.dtype), start, 1)
      v_cache = jax.lax.dynamic_update_slice_in_dim(v_cache, v_BLHD.astype(v_cache.dtype), start, 1)
      kv = (k_cache, v_cache)
      o_BLHD = _attend_prefix(self.attention, q_BLHD, k_cache, v_cache, scale, end)
    o_BLHD = nn.with_logical_constraint(o_BLHD, names)
    out_BLC = Linear((C,), ('heads', 'kv', 'embed'), std, 1 / math.sqrt(2 * self.depth), n_in=2,
                     dtype=self.dtype, name='proj')(o_BLHD)
    return out_BLC, kv


def _attend_prefix(name, q_BlHD, k_BSHD, v_BSHD, scale, end):
  """Decoding: the new queries attend to the cache prefix [0, end) with no mask inside it (every
  cached token is of this or an earlier step). A static `end` slices the prefix; a traced one masks
  the keys at and after it."""
  if isinstance(end, int):
    return attention_lib.attend(name, q_BlHD, k_BSHD[:, :end], v_BSHD[:, :end], scale, None)
  lengths_B = jnp.full((q_BlHD.shape[0],), end, jnp.int32)
  return jax.nn.dot_product_attention(q_BlHD, k_BSHD, v_BSHD, scale=scale,
                                      key_value_seq_lengths=lengths_B)


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
      ada_gss = param(self, 'ada_gss', _ada_gss_init(C), (6, C), (None, 'embed'))
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


_POSITIVE_INTS = ('vocab_size', 'cvae', 'num_classes', 'depth', 'embed_dim', 'num_heads')  # cvae: VAR's only
_FRACTIONS = ('cond_drop_rate', 'drop_path_rate')  # in [0, 1]


def _is_int(v: Any) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
  return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


def validate(a: Mapping[str, Any]) -> None:
  """ConfigError for trunk attributes that cannot build (sizes, rates, width/heads, dtype, remat, attention)."""
  for key in (k for k in _POSITIVE_INTS if k in a):
    if not _is_int(a[key]) or a[key] <= 0:
      raise errors.ConfigError(f'model.{key}={a[key]!r} must be a positive integer')
  for key in ('mlp_ratio', 'norm_eps'):
    if not _is_number(a[key]) or a[key] <= 0:
      raise errors.ConfigError(f'model.{key}={a[key]!r} must be a positive number')
  for key in _FRACTIONS:
    if not _is_number(a[key]) or not 0 <= a[key] <= 1:
      raise errors.ConfigError(f'model.{key}={a[key]!r} must be a number in [0, 1]')
  if a['embed_dim'] % a['num_heads']:
    raise errors.ConfigError(f"model.embed_dim={a['embed_dim']} must be divisible by num_heads={a['num_heads']}")
  if a['dtype'] not in DTYPES:
    raise errors.ConfigError(f"model.dtype={a['dtype']!r}; expected one of {sorted(DTYPES)}")
  if a['remat_policy'] != 'none' and a['remat_policy'] not in REMAT_POLICIES:
    raise errors.ConfigError(f"model.remat_policy={a['remat_policy']!r}; expected 'none' or one of "
                     f'{sorted(REMAT_POLICIES)}')
  if a['attention'] not in attention_lib.NAMES:
    raise errors.ConfigError(f"model.attention={a['attention']!r}; expected one of {sorted(attention_lib.NAMES)}")


def depth_rule(depth: int) -> dict[str, Any]:
  """The official width rule: embed_dim = 64 depth, num_heads = depth, drop_path_rate = 0.1 depth / 24."""
  return {'embed_dim': 64 * depth, 'num_heads': depth, 'drop_path_rate': 0.1 * depth / 24}


def resolve_attributes(model_cls, fields: Sequence[str], model_cfg: Any, what: str) -> dict[str, Any]:
  """`model_cls` attributes from a config (dict or ConfigDict): the class defaults, then the config's
  non-None values, with `depth_rule` for the width fields left None or missing. ConfigError names unknown
  keys (`what` says whose attributes `fields` are)."""
  cfg = dict(model_cfg.to_dict() if hasattr(model_cfg, 'to_dict') else model_cfg)
  unknown = sorted(set(cfg) - set(fields))
  if unknown:
    raise errors.ConfigError(f'model config: unknown keys {unknown}; {what} attributes are {list(fields)}')
  depth = model_cls.depth if cfg.get('depth') is None else cfg['depth']
  for key, value in depth_rule(depth).items():
    if cfg.get(key) is None:
      cfg[key] = value
  out = {f: getattr(model_cls, f) for f in fields}
  out.update({k: v for k, v in cfg.items() if v is not None})
  out['depth'] = depth
  out['patch_nums'] = tuple(int(p) for p in out['patch_nums'])
  return out


def make_blocks(*, depth: int, scan_layers: bool, remat_policy: str, **block_kw):
  """The block stack, to assign to a module attribute in `setup` (`self.blocks = make_blocks(...)`):
  one `nn.scan`ned Block over `depth` layers, or a list of `depth` Blocks. block_kw: Block's fields
  except `depth`."""
  block_cls = Block
  if remat_policy != 'none':
    # static_argnums count `self` as 0: (train, start) are arguments 5 and 6.
    block_cls = nn.remat(Block, policy=REMAT_POLICIES[remat_policy], prevent_cse=not scan_layers,
                         static_argnums=(5, 6))
  if scan_layers:
    return nn.scan(
        block_cls, variable_axes={'params': 0}, split_rngs={'params': True, 'dropout': True},
        in_axes=(nn.broadcast, 0, 0, nn.broadcast, nn.broadcast),
        length=depth, metadata_params={nn.PARTITION_NAME: 'layers'})(depth=depth, **block_kw)
  return [block_cls(depth=depth, **block_kw) for _ in range(depth)]


def run_blocks(blocks, x_BLC, cond, *, depth: int, drop_rate: float, kv, train: bool, start):
  """Runs `make_blocks`'s stack; cond is the class embedding (or the shared AdaLN output), drop-path
  rising linearly from 0 to `drop_rate`; returns (x_BLC, kv), kv None in training."""
  drop_D = jnp.linspace(0.0, drop_rate, depth, dtype=jnp.float32)
  if not isinstance(blocks, (list, tuple)):
    return blocks(x_BLC, cond, drop_D, kv, train, start)
  new_kv = []
  for i, block in enumerate(blocks):
    layer_kv = None if kv is None else (kv[0][i], kv[1][i])
    x_BLC, layer_kv = block(x_BLC, cond, drop_D[i], layer_kv, train, start)
    new_kv.append(layer_kv)
  if kv is None:
    return x_BLC, None
  return x_BLC, tuple(jnp.stack([c[j] for c in new_kv]) for j in range(2))


def setup_trunk(module: nn.Module, mask_blocks: tuple[int, ...]) -> None:
  """In a single-map model's `setup` (next-token, MaskGIT): assigns `shared_ada_lin` (when shared_aln),
  `blocks` and `head_nm`/`head` from the module's trunk attributes; `mask_blocks` are the attention
  mask's block sides (`(1,) * L` causal, `(n,)` one block: bidirectional)."""
  C = module.embed_dim
  if module.shared_aln:
    module.shared_ada_lin = Linear((6, C), ('embed', None, None), math.sqrt(1 / (3 * C)), name='shared_ada_lin')
  module.blocks = make_blocks(
      depth=module.depth, scan_layers=module.scan_layers, remat_policy=module.remat_policy, embed_dim=C,
      num_heads=module.num_heads, mlp_ratio=module.mlp_ratio, norm_eps=module.norm_eps,
      shared_aln=module.shared_aln, attn_l2_norm=module.attn_l2_norm, use_drop_path=module.drop_path_rate > 0,
      attention=module.attention, patch_nums=tuple(mask_blocks), dtype=DTYPES[module.dtype])
  module.head_nm, module.head = head_layers(C, module.vocab_size)


def run_trunk(module: nn.Module, h_BLC, cond_BD, *, kv, train: bool, start):
  """`setup_trunk`'s stack and head on inputs h_BLC conditioned on cond_BD -> (logits_BLV f32, kv)."""
  cond = module.shared_ada_lin(nn.silu(cond_BD)) if module.shared_aln else cond_BD
  h_BLC, kv = run_blocks(module.blocks, h_BLC.astype(DTYPES[module.dtype]), cond, depth=module.depth,
                         drop_rate=module.drop_path_rate, kv=kv, train=train, start=start)
  return adaln_logits(module.head_nm, module.head, h_BLC, cond_BD, module.norm_eps), kv


def head_layers(embed_dim: int, vocab_size: int) -> tuple[Linear, Linear]:
  """(head_nm, head) Linears for `adaln_logits`; assign each to its own attribute in `setup`."""
  std = math.sqrt(1 / (3 * embed_dim))
  return (Linear((2, embed_dim), ('embed', None, None), std, INIT_ADALN),
          Linear((vocab_size,), ('embed', 'vocab'), std, INIT_HEAD))


def adaln_logits(head_nm, head, x_BLC, cond_BD, eps: float):
  """AdaLN-before-head and head, in float32 -> logits_BLV."""
  mods_B2C = head_nm(nn.silu(cond_BD.astype(jnp.float32)))
  h_BLC = layer_norm(x_BLC.astype(jnp.float32), eps)
  h_BLC = h_BLC * (mods_B2C[:, None, 0] + 1) + mods_B2C[:, None, 1]
  logits_BLV = head(h_BLC).astype(jnp.float32)
  return nn.with_logical_constraint(logits_BLV, ('batch', 'length', 'vocab'))
