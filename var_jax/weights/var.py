"""The VAR transformer's weights in the official layout (FoundationVision/VAR `models/var.py`).

The layout needs reshapes a `KeyMap` does not express: stacked layers (leading axis under `blocks` when
scanned), qkv kernels (C, 3, heads, head_dim), proj (heads, head_dim, C), AdaLN linears (D, 6 or 2, C) and
1-row position params without their leading 1. Both AdaLN variants (per-block `ada_lin`, shared
`shared_ada_lin` + `ada_gss`) convert, to a scanned or an unrolled model.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np

from var_jax import errors
from var_jax.models import var as var_lib
from var_jax.weights import state_dict as sd


def _num_blocks(state_dict: Mapping[str, Any]) -> int:
  ids = {int(m.group(1)) for k in state_dict if (m := re.match(r'blocks\.(\d+)\.', k))}
  return max(ids) + 1 if ids else 0


def config_from_state_dict(state_dict: Mapping[str, Any], what: str = 'VAR state dict') -> dict[str, Any]:
  """VAR attributes recorded by an official state dict.

  num_heads is only recorded by attn_l2_norm checkpoints (scale_mul_1H11); otherwise it is absent.
  """
  missing = [k for k in ('class_emb.weight', 'head.weight', 'word_embed.weight', 'lvl_1L',
                         'blocks.0.ffn.fc1.weight') if k not in state_dict]
  if missing:
    raise errors.WeightsError(f'{what}: not an official VAR state dict (missing {missing})')
  counts = np.bincount(np.asarray(state_dict['lvl_1L']).reshape(-1))
  fc1 = np.shape(state_dict['blocks.0.ffn.fc1.weight'])
  cfg = {
      'vocab_size': int(np.shape(state_dict['head.weight'])[0]),
      'cvae': int(np.shape(state_dict['word_embed.weight'])[1]),
      'patch_nums': tuple(int(round(np.sqrt(c))) for c in counts),
      'num_classes': int(np.shape(state_dict['class_emb.weight'])[0]) - 1,
      'depth': _num_blocks(state_dict),
      'embed_dim': int(np.shape(state_dict['class_emb.weight'])[1]),
      'mlp_ratio': fc1[0] / fc1[1],
      'shared_aln': 'shared_ada_lin.1.weight' in state_dict,
      'attn_l2_norm': 'blocks.0.attn.scale_mul_1H11' in state_dict,
  }
  if cfg['attn_l2_norm']:
    cfg['num_heads'] = int(np.shape(state_dict['blocks.0.attn.scale_mul_1H11'])[1])
  return cfg


def check_matches(state_dict: Mapping[str, Any], model: var_lib.VAR, what: str) -> None:
  """WeightsError naming the first architecture attribute in which the state dict and `model` differ."""
  got = config_from_state_dict(state_dict, what)
  kind = lambda s: 'shared AdaLN (shared_ada_lin + ada_gss)' if s else 'per-block AdaLN (ada_lin)'
  if got['shared_aln'] != model.shared_aln:
    raise errors.WeightsError(f"{what} uses {kind(got['shared_aln'])} but the model has "
                              f'shared_aln={model.shared_aln}')
  for key in ('depth', 'attn_l2_norm', 'embed_dim', 'num_heads', 'vocab_size', 'cvae', 'num_classes',
              'patch_nums', 'mlp_ratio'):
    have = tuple(model.patch_nums) if key == 'patch_nums' else getattr(model, key)
    if key in got and got[key] != have:
      raise errors.WeightsError(f'{what} has {key}={got[key]} but the model has {key}={have}')


def from_state_dict(state_dict: Mapping[str, Any], model: var_lib.VAR,
                    what: str = 'VAR state dict') -> sd.Params:
  """Official VAR state dict -> `model`'s params (scanned or unrolled, as the model is built)."""
  check_matches(state_dict, model, what)
  s = {k: np.asarray(v, np.float32) for k, v in state_dict.items() if k != 'lvl_1L'}
  C, H = model.embed_dim, model.num_heads
  Dh = C // H

  def linear(prefix, out_shape=None):
    kernel = s[prefix + '.weight'].T
    out_shape = out_shape or kernel.shape[1:]
    out = {'kernel': kernel.reshape(kernel.shape[0], *out_shape)}
    if prefix + '.bias' in s:
      out['bias'] = s[prefix + '.bias'].reshape(out_shape)
    return out

  def block(i):
    p = f'blocks.{i}.'
    if np.any(s[p + 'attn.zero_k_bias']):
      raise errors.WeightsError(f'{what}: {p}attn.zero_k_bias is not zero')
    attn = {'qkv': {'kernel': s[p + 'attn.mat_qkv.weight'].T.reshape(C, 3, H, Dh)},
            'q_bias': s[p + 'attn.q_bias'].reshape(H, Dh),
            'v_bias': s[p + 'attn.v_bias'].reshape(H, Dh),
            'proj': linear(p + 'attn.proj')}
    attn['proj']['kernel'] = attn['proj']['kernel'].reshape(H, Dh, C)
    if model.attn_l2_norm:
      attn['scale_mul'] = s[p + 'attn.scale_mul_1H11'].reshape(H)
    out = {'attn': attn, 'fc1': linear(p + 'ffn.fc1'), 'fc2': linear(p + 'ffn.fc2')}
    if model.shared_aln:
      out['ada_gss'] = s[p + 'ada_gss'].reshape(6, C)
    else:
      out['ada_lin'] = linear(p + 'ada_lin.1', (6, C))
    return out

  try:
    params = {'word_embed': linear('word_embed'), 'class_emb': s['class_emb.weight'],
              'pos_start': s['pos_start'].reshape(-1, C), 'pos_embed': s['pos_1LC'].reshape(-1, C),
              'lvl_embed': s['lvl_embed.weight'], 'head_nm': linear('head_nm.ada_lin.1', (2, C)),
              'head': linear('head')}
    if model.shared_aln:
      params['shared_ada_lin'] = linear('shared_ada_lin.1', (6, C))
    blocks = [block(i) for i in range(model.depth)]
  except KeyError as e:
    raise errors.WeightsError(f'{what}: missing {e.args[0]}') from None
  except ValueError as e:  # a reshape that does not fit
    raise errors.WeightsError(f'{what} does not fit the model: {e}') from None
  if model.scan_layers:
    params['blocks'] = jax.tree.map(lambda *xs: np.stack(xs), *blocks)
  else:
    params.update({f'blocks_{i}': b for i, b in enumerate(blocks)})
  check_shapes(params, model, what)
  return params


def param_shapes(model: var_lib.VAR) -> sd.Params:
  """The model's params tree as ShapeDtypeStructs (nothing is computed)."""
  L = model.seq_len - model.first_l
  return flax.linen.unbox(jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1,), jnp.int32),
                                         jnp.zeros((1, L, model.cvae)))['params'])


def check_shapes(params: sd.Params, model: var_lib.VAR, what: str) -> None:
  """WeightsError listing every param path whose presence or shape differs from `model`'s."""
  want, got = sd.flat_leaves(param_shapes(model)), sd.flat_leaves(params)
  bad = sorted('/'.join(k) for k in set(want) | set(got)
               if k not in want or k not in got or tuple(want[k].shape) != np.shape(got[k]))
  if bad:
    raise errors.WeightsError(f'{what} does not match the model at {len(bad)} params: {sd.listed(bad)}')


def to_state_dict(params: sd.Params, model: var_lib.VAR) -> sd.StateDict:
  """VAR params -> official state dict, buffers (lvl_1L, attn_bias_for_masking, zero_k_bias) included."""
  p = jax.tree.map(np.asarray, flax.linen.unbox(dict(params)))
  C = model.embed_dim
  if model.scan_layers:
    blocks = [jax.tree.map(lambda x, i=i: x[i], p['blocks']) for i in range(model.depth)]
  else:
    blocks = [p[f'blocks_{i}'] for i in range(model.depth)]

  def linear(prefix, tree):
    out = {prefix + '.weight': tree['kernel'].reshape(tree['kernel'].shape[0], -1).T}
    if 'bias' in tree:
      out[prefix + '.bias'] = tree['bias'].reshape(-1)
    return out

  state = {'pos_start': p['pos_start'][None], 'pos_1LC': p['pos_embed'][None],
           'lvl_1L': model.level_ids()[None].astype(np.int64),
           'attn_bias_for_masking': np.where(model.block_causal_mask(), 0.0,
                                             -np.inf).astype(np.float32)[None, None],
           'class_emb.weight': p['class_emb'], 'lvl_embed.weight': p['lvl_embed'],
           **linear('word_embed', p['word_embed'])}
  if model.shared_aln:
    state.update(linear('shared_ada_lin.1', p['shared_ada_lin']))
  for i, b in enumerate(blocks):
    q = f'blocks.{i}.'
    if model.attn_l2_norm:
      state[q + 'attn.scale_mul_1H11'] = b['attn']['scale_mul'].reshape(1, -1, 1, 1)
    state[q + 'attn.q_bias'] = b['attn']['q_bias'].reshape(C)
    state[q + 'attn.v_bias'] = b['attn']['v_bias'].reshape(C)
    state[q + 'attn.zero_k_bias'] = np.zeros(C, np.float32)
    state[q + 'attn.mat_qkv.weight'] = b['attn']['qkv']['kernel'].reshape(C, 3 * C).T
    state.update(linear(q + 'attn.proj', {'kernel': b['attn']['proj']['kernel'].reshape(C, C),
                                          'bias': b['attn']['proj']['bias']}))
    state.update(linear(q + 'ffn.fc1', b['fc1']))
    state.update(linear(q + 'ffn.fc2', b['fc2']))
    if model.shared_aln:
      state[q + 'ada_gss'] = b['ada_gss'].reshape(1, 1, 6, C)
    else:
      state.update(linear(q + 'ada_lin.1', b['ada_lin']))
  state.update(linear('head_nm.ada_lin.1', p['head_nm']))
  state.update(linear('head', p['head']))
  return {k: v if k == 'lvl_1L' else np.ascontiguousarray(v, np.float32) for k, v in state.items()}


def load(path: str, overrides: Mapping[str, Any] | None = None) -> tuple[var_lib.VAR, sd.Params]:
  """(VAR module, params) from an official VAR state dict (.pth / .npz).

  The architecture is read off the state dict; num_heads, recorded only by attn_l2_norm checkpoints,
  otherwise follows the official rule embed_dim / 64 unless `overrides` sets it.
  """
  state_dict = sd.read_state_dict(path)
  cfg = config_from_state_dict(state_dict, what=path)
  cfg.setdefault('num_heads', max(cfg['embed_dim'] // 64, 1))
  cfg.update(overrides or {})
  try:
    model = var_lib.VAR(**var_lib.resolve(cfg))
  except errors.ConfigError as e:
    raise errors.ConfigError(f'{path}: {e}') from None
  return model, from_state_dict(state_dict, model, what=path)


def convert(src: str, dst: str, overrides: Mapping[str, Any] | None = None) -> str:
  """Official VAR state dict `src` -> `dst` (.pth / .npz) through Flax params; returns the fingerprint."""
  model, params = load(src, overrides)
  sd.write_state_dict(dst, to_state_dict(params, model))
  return sd.fingerprint(params)
