"""VAR's block-causal attention: one interface, one path per backend, the same result from each.

In teacher forcing a query of scale k attends to every key of scales <= k (the block-causal mask);
in cached decoding one scale's queries attend to the whole cache prefix, with no mask. Every path is

  fn(q_BLHD, k_BSHD, v_BSHD, scale, patch_nums) -> o_BLHD

with `patch_nums` the scale sizes of the teacher-forcing sequence (S = L = sum pn²), or None for no
mask. Logits and softmax are in float32, as the 'xla' reference. Paths (`PATHS`):

  xla          dense L x L logits, mask applied (the reference; computes L² pairs)
  dot_product  `jax.nn.dot_product_attention` with the dense mask (JAX picks the kernel: XLA today)
  grouped      scales in a few consecutive groups (`token_groups`): a group's queries attend to the
               key prefix that ends with the group, masked only where the group holds several scales
               (in practice the first one). Portable, static shapes; ~64% of L² for the default
               schedule with 4 groups, where the mask keeps 62%
  cudnn        grouped, the unmasked groups (all but the first, in practice) through cuDNN's fused
               kernel (NVIDIA GPU, float16/bfloat16), the masked one as 'grouped'
  tokamax      tokamax's Mosaic GPU flash attention given each query's key end: skips the masked
               tiles forward and backward (optional package: jax >= 0.11, Python >= 3.12, sm90+)
  splash       Pallas TPU splash attention with the mask as a function of positions (TPU; runs in
               Pallas interpret mode elsewhere, for tests)

'auto' (`resolve`) picks a path from the device and compute dtype. What each path computes, in
(query, key) pairs, is `computed_pairs`; the FLOP counts in var_jax.flops use it.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from var_jax import errors

try:  # Pallas TPU kernels, part of jax (guarded: the module path has moved before).
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash_lib
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask_lib
except ImportError:
  splash_lib = splash_mask_lib = None
try:  # Optional, see the module docstring.
  from tokamax._src.ops.attention import base as tokamax_base
  from tokamax._src.ops.attention import pallas_mosaic_gpu as tokamax_mosaic_gpu
except ImportError:
  tokamax_base = tokamax_mosaic_gpu = None

Array = jax.Array

MAX_GROUPS = 4  # 'grouped' and 'cudnn': more groups save little (62% is the floor) for more kernels
SPLASH_BLOCK = 128  # splash tile (queries and keys); the smallest the TPU kernel takes
TOKAMAX_TILE = (128, 128)  # (queries, keys) per tile of tokamax's sm90 heuristic config
AUTO_DEFAULT = 'grouped'  # see `resolve`


# ---- the layout ---------------------------------------------------------------------------------


def level_ids(patch_nums: Sequence[int]) -> np.ndarray:
  """Scale index of every position, (L,) int32."""
  return np.concatenate([np.full(p * p, k, np.int32) for k, p in enumerate(patch_nums)])


def block_causal_mask(patch_nums: Sequence[int]) -> np.ndarray:
  """(L, L) bool: position i may attend to j iff scale(j) <= scale(i)."""
  lvl_L = level_ids(patch_nums)
  return lvl_L[:, None] >= lvl_L[None, :]


def scale_ends(patch_nums: Sequence[int]) -> np.ndarray:
  """Cumulative token counts: scale k covers positions [ends[k-1], ends[k])."""
  return np.cumsum([p * p for p in patch_nums])


def key_ends(patch_nums: Sequence[int]) -> np.ndarray:
  """(L,) int32: query i attends to keys [0, key_ends[i]), the end of its scale."""
  return scale_ends(patch_nums)[level_ids(patch_nums)].astype(np.int32)


# ---- grouping -----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def scale_groups(patch_nums: tuple[int, ...],
                 max_groups: int = MAX_GROUPS) -> tuple[tuple[int, int], ...]:
  """Consecutive scale ranges [a, b) that minimise the computed pairs sum (tokens in a..b) * end(b).

  Exact dynamic programme over split points with at most `max_groups` groups.
  """
  if max_groups < 1:
    raise errors.ConfigError(f'attention: max_groups={max_groups} must be at least 1')
  ends = [0, *scale_ends(patch_nums).tolist()]
  cost = lambda a, b: (ends[b] - ends[a]) * ends[b]
  K = len(patch_nums)
  # best[b]: (pairs, groups) covering scales [0, b) with at most g groups, for g = 0, 1, ...
  best = [(0, ())] + [(math.inf, ())] * K
  for _ in range(min(max_groups, K)):
    best = [min([best[b]] + [(best[a][0] + cost(a, b), best[a][1] + ((a, b),)) for a in range(b)])
            for b in range(K + 1)]
  return best[K][1]


def token_groups(patch_nums: Sequence[int],
                 max_groups: int = MAX_GROUPS) -> tuple[tuple[int, int, bool], ...]:
  """(begin, end, masked) token ranges of `scale_groups`; keys of a group are [0, end)."""
  ends = [0, *scale_ends(patch_nums).tolist()]
  return tuple((ends[a], ends[b], b - a > 1) for a, b in scale_groups(tuple(patch_nums), max_groups))


def tile_pairs(patch_nums: Sequence[int], block_q: int, block_kv: int) -> int:
  """Pairs a kernel computes that runs only the (block_q, block_kv) tiles holding a kept pair.

  The sequence is padded to a multiple of each block; a query's kept keys are a prefix, so a query
  tile runs the key tiles up to the largest key end among its queries (padding queries: all keys).
  """
  L = int(scale_ends(patch_nums)[-1])
  k_end = np.full(-(-L // block_q) * block_q, L)
  k_end[:L] = key_ends(patch_nums)
  tiles = -(-k_end.reshape(-1, block_q).max(1) // block_kv)
  return int(tiles.sum()) * block_q * block_kv


# ---- kernels taking an explicit mask --------------------------------------------------------------


def _softmax_attention(q_BLHD, k_BSHD, v_BSHD, scale, mask_LS):
  """Einsum attention with float32 logits; mask_LS (bool, True = may attend) or None."""
  logits_BHLS = jnp.einsum('blhd,bshd->bhls', q_BLHD, k_BSHD,
                           preferred_element_type=jnp.float32) * scale
  if mask_LS is not None:
    logits_BHLS = jnp.where(mask_LS, logits_BHLS, -jnp.inf)
  p_BHLS = jax.nn.softmax(logits_BHLS, axis=-1).astype(v_BSHD.dtype)
  return jnp.einsum('bhls,bshd->blhd', p_BHLS, v_BSHD)


def _jax_nn_attention(q_BLHD, k_BSHD, v_BSHD, scale, mask_LS, implementation=None):
  mask = None if mask_LS is None else jnp.asarray(mask_LS)[None, None]
  return jax.nn.dot_product_attention(q_BLHD, k_BSHD, v_BSHD, mask=mask, scale=scale,
                                      implementation=implementation)


def _dense(attend: Callable[..., Array]) -> Callable[..., Array]:
  """A path that applies the whole (L, L) mask in one call of `attend`."""
  def path(q_BLHD, k_BSHD, v_BSHD, scale, patch_nums):
    mask_LS = None if patch_nums is None else block_causal_mask(patch_nums)
    return attend(q_BLHD, k_BSHD, v_BSHD, scale, mask_LS)
  return path


def _grouped(attend: Callable[..., Array], attend_masked: Callable[..., Array] | None = None,
             max_groups: int = MAX_GROUPS) -> Callable[..., Array]:
  """A path that attends once per group of `token_groups`, on the group's key prefix: `attend`
  for the groups without a mask, `attend_masked` (default `attend`) for those with one."""
  attend_masked = attend_masked or attend

  def path(q_BLHD, k_BSHD, v_BSHD, scale, patch_nums):
    if patch_nums is None:
      return attend(q_BLHD, k_BSHD, v_BSHD, scale, None)
    mask_LL = block_causal_mask(patch_nums)
    o_BlHD = [attend_masked(q_BLHD[:, b:e], k_BSHD[:, :e], v_BSHD[:, :e], scale, mask_LL[b:e, :e])
              if masked else attend(q_BLHD[:, b:e], k_BSHD[:, :e], v_BSHD[:, :e], scale, None)
              for b, e, masked in token_groups(patch_nums, max_groups)]
    return jnp.concatenate(o_BlHD, axis=1)
  return path


# ---- fused kernels that skip masked tiles ---------------------------------------------------------


def _per_shard(fn, q_BLHD, k_BSHD, v_BSHD):
  """Runs a custom kernel per device under the current mesh: batch and heads split as the logical
  axis rules say, length and head_dim whole (XLA cannot partition a custom call itself)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return fn(q_BLHD, k_BSHD, v_BSHD)
  batch, _, heads, _ = nn.logical_to_mesh_axes(('batch', 'length', 'heads', 'kv'))
  spec = jax.sharding.PartitionSpec(batch, None, heads, None)
  return jax.shard_map(fn, mesh=mesh, in_specs=(spec,) * 3, out_specs=spec,
                       check_vma=False)(q_BLHD, k_BSHD, v_BSHD)


def _pad_length(x_BLHD, length):
  return jnp.pad(x_BLHD, ((0, 0), (0, length - x_BLHD.shape[1]), (0, 0), (0, 0)))


_COMPUTABLE_MASK = splash_mask_lib._ComputableMask if splash_lib else object  # pylint: disable=protected-access


class _ScaleMask(_COMPUTABLE_MASK):
  """Splash mask over padded positions: i may attend to j unless a scale end b has i < b <= j.

  With L among the ends, padding rows (i >= L) attend to everything and padding keys are hidden
  from real rows. Evaluated in numpy for the tile map and inside the kernel for partial tiles.
  """

  def __init__(self, shape, ends):
    self.ends = ends

    def mask_function(q_ids, kv_ids):
      keep = (q_ids >= ends[0]) | (kv_ids < ends[0])
      for b in ends[1:]:
        keep = keep & ((q_ids >= b) | (kv_ids < b))
      return keep

    super().__init__(shape=shape, mask_function=mask_function)

  def __eq__(self, other):
    return isinstance(other, _ScaleMask) and (self.shape, self.ends) == (other.shape, other.ends)

  def __hash__(self):
    return hash((_ScaleMask, self.shape, self.ends))


def _splash_kernel(patch_nums: tuple[int, ...], heads: int, interpret: bool):
  """Splash kernel for (H, Lp, D) inputs, Lp = L rounded up to SPLASH_BLOCK.

  Built in each trace (its tile tables become that trace's constants); jax caches the host-side
  tile map per mask, which is why the mask is hashable.
  """
  ends = tuple(int(e) for e in scale_ends(patch_nums))
  padded = -(-ends[-1] // SPLASH_BLOCK) * SPLASH_BLOCK
  mask = splash_mask_lib.MultiHeadMask([_ScaleMask((padded, padded), ends)] * heads)
  b = SPLASH_BLOCK
  blocks = splash_lib.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b,
                                 block_kv_dkv=b, block_kv_dkv_compute=b, block_q_dq=b, block_kv_dq=b)
  return splash_lib.make_splash_mha(mask, block_sizes=blocks, head_shards=1, q_seq_shards=1,
                                    interpret=interpret)


def splash_attention(q_BLHD, k_BSHD, v_BSHD, scale, patch_nums):
  """Splash attention (TPU), tiles of SPLASH_BLOCK; decoding (no mask) takes the einsum path."""
  if splash_lib is None:
    raise errors.ConfigError("model.attention='splash' needs jax's Pallas splash attention, which this jax "
                     "lacks; use 'auto' to pick an available path")
  if patch_nums is None:
    return _softmax_attention(q_BLHD, k_BSHD, v_BSHD, scale, None)

  def local(q_BLHD, k_BLHD, v_BLHD):
    L, H = q_BLHD.shape[1], q_BLHD.shape[2]
    kernel = _splash_kernel(tuple(patch_nums), H, interpret=jax.default_backend() != 'tpu')
    padded = -(-L // SPLASH_BLOCK) * SPLASH_BLOCK
    to_BHLD = lambda x: _pad_length(x, padded).transpose(0, 2, 1, 3)
    # Splash does not scale logits: fold `scale` into q (a power of two for VAR's head sizes).
    o_BHLD = jax.vmap(kernel)(to_BHLD(q_BLHD * jnp.asarray(scale, q_BLHD.dtype)), to_BHLD(k_BLHD),
                              to_BHLD(v_BLHD))
    return o_BHLD.transpose(0, 2, 1, 3)[:, :L]

  return _per_shard(local, q_BLHD, k_BSHD, v_BSHD)


def tokamax_attention(q_BLHD, k_BSHD, v_BSHD, scale, patch_nums):
  """tokamax Mosaic GPU flash attention with per-query key ends; decoding takes the einsum path."""
  if tokamax_base is None:
    raise errors.ConfigError("model.attention='tokamax' needs the tokamax package (jax >= 0.11, "
                     "Python >= 3.12); use 'auto' to pick an available path")
  if patch_nums is None:
    return _softmax_attention(q_BLHD, k_BSHD, v_BSHD, scale, None)

  def local(q_BLHD, k_BLHD, v_BLHD):
    # The kernel reduces key ends over query tiles: pad the queries (the extra rows see all keys).
    L, tile = q_BLHD.shape[1], TOKAMAX_TILE[0]
    padded = -(-L // tile) * tile
    k_end_L = np.full(padded, L, np.int32)
    k_end_L[:L] = key_ends(patch_nums)
    op = tokamax_mosaic_gpu.PallasMosaicGpuFlashAttention()
    o_BLHD = op(_pad_length(q_BLHD, padded), k_BLHD, v_BLHD, logits_scale=scale,
                logits_dtype=jnp.float32, mask=tokamax_base.Mask(k_end=jnp.asarray(k_end_L)))
    return o_BLHD[:, :L]

  return _per_shard(local, q_BLHD, k_BSHD, v_BSHD)


PATHS: dict[str, Callable[..., Array]] = {
    'xla': _dense(_softmax_attention),
    'dot_product': _dense(_jax_nn_attention),
    'grouped': _grouped(_softmax_attention),
    # cuDNN takes a mask only as a bias, which needs even lengths in training: masked groups in XLA.
    'cudnn': _grouped(functools.partial(_jax_nn_attention, implementation='cudnn'),
                      attend_masked=_softmax_attention),
    'tokamax': tokamax_attention,
    'splash': splash_attention,
}
NAMES = ('auto', *PATHS)


def computed_pairs(path: str, patch_nums: Sequence[int]) -> int:
  """(query, key) pairs per head and layer that `path` computes in teacher forcing."""
  L = int(scale_ends(patch_nums)[-1])
  if path in ('xla', 'dot_product'):
    return L * L
  if path in ('grouped', 'cudnn'):
    return sum((e - b) * e for b, e, _ in token_groups(patch_nums))
  if path == 'tokamax':
    return tile_pairs(patch_nums, *TOKAMAX_TILE)
  if path == 'splash':
    return tile_pairs(patch_nums, SPLASH_BLOCK, SPLASH_BLOCK)
  raise errors.ConfigError(f'attention: unknown path {path!r}; expected one of {sorted(PATHS)}')


# ---- choosing a path ------------------------------------------------------------------------------


def resolve(name: str, dtype: Any = jnp.float32, device: Any = None) -> str:
  """The path `name` stands for on `device` (default: the first device) at compute `dtype`.

  'auto': TPU -> 'splash'; NVIDIA GPU with float16/bfloat16 -> 'tokamax' where it is installed and
  the GPU is sm90 or newer, else 'cudnn'; anything else (CPU, float32 on GPU) -> AUTO_DEFAULT
  ('grouped': a depth-4 forward+backward on a loaded 2-core CPU ran 5% faster than 'xla').
  """
  if name != 'auto':
    return name
  device = jax.devices()[0] if device is None else device
  if device.platform == 'tpu':
    return 'splash'
  if 'NVIDIA' in device.device_kind and jnp.dtype(dtype) in (jnp.float16, jnp.bfloat16):
    sm90 = float(getattr(device, 'compute_capability', None) or 0) >= 9.0
    return 'tokamax' if tokamax_base is not None and sm90 else 'cudnn'
  return AUTO_DEFAULT


def attend(name: str, q_BLHD, k_BSHD, v_BSHD, scale, patch_nums):
  """Attention by path name ('auto' resolved for the first device and q's dtype)."""
  return PATHS[resolve(name, q_BLHD.dtype)](q_BLHD, k_BSHD, v_BSHD, scale, patch_nums)
