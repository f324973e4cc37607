"""Official VAR state_dict <-> var_jax VAR params (to move into var_jax/convert.py)."""
from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from var_jax.models import var as var_lib


def _blocks_in(state: Mapping[str, Any]) -> int:
  ids = {int(m.group(1)) for k in state if (m := re.match(r'blocks\.(\d+)\.', k))}
  return max(ids) + 1 if ids else 0


def var_config_from_torch(state: Mapping[str, Any]) -> dict[str, Any]:
  """VAR attributes implied by an official state_dict (num_heads needs attn_l2_norm's scale_mul)."""
  missing = [k for k in ('class_emb.weight', 'head.weight', 'word_embed.weight', 'lvl_1L') if k not in state]
  if missing:
    raise ValueError(f'not an official VAR state_dict: missing {missing}')
  lvl_L = np.asarray(state['lvl_1L']).reshape(-1)
  counts = np.bincount(lvl_L)
  patch_nums = tuple(int(round(np.sqrt(c))) for c in counts)
  cfg = {
      'vocab_size': int(state['head.weight'].shape[0]),
      'cvae': int(state['word_embed.weight'].shape[1]),
      'patch_nums': patch_nums,
      'num_classes': int(state['class_emb.weight'].shape[0]) - 1,
      'depth': _blocks_in(state),
      'embed_dim': int(state['class_emb.weight'].shape[1]),
      'mlp_ratio': state['blocks.0.ffn.fc1.weight'].shape[0] / state['blocks.0.ffn.fc1.weight'].shape[1],
      'shared_aln': 'shared_ada_lin.1.weight' in state,
      'attn_l2_norm': 'blocks.0.attn.scale_mul_1H11' in state,
  }
  if cfg['attn_l2_norm']:
    cfg['num_heads'] = int(state['blocks.0.attn.scale_mul_1H11'].shape[1])
  return cfg


def _check_matches(state: Mapping[str, Any], model: var_lib.VAR) -> None:
  got = var_config_from_torch(state)
  if got['shared_aln'] != model.shared_aln:
    kind = lambda s: 'shared AdaLN (shared_ada_lin + ada_gss)' if s else 'per-block AdaLN (ada_lin)'
    raise ValueError(f"VAR checkpoint uses {kind(got['shared_aln'])} but the model has "
                     f'shared_aln={model.shared_aln}')
  if got['attn_l2_norm'] != model.attn_l2_norm:
    raise ValueError(f"VAR checkpoint has attn_l2_norm={got['attn_l2_norm']} but the model has "
                     f'attn_l2_norm={model.attn_l2_norm}')
  for key in ('depth', 'embed_dim', 'vocab_size', 'cvae', 'num_classes', 'patch_nums', 'mlp_ratio',
              'num_heads'):
    if key in got and got[key] != (tuple(model.patch_nums) if key == 'patch_nums' else getattr(model, key)):
      raise ValueError(f'VAR checkpoint has {key}={got[key]} but the model has '
                       f'{key}={getattr(model, key)}')


def var_params_from_torch(state: Mapping[str, Any], model: var_lib.VAR) -> dict[str, Any]:
  """Official VAR state_dict (numpy arrays, torch key names) -> params of `model` (float32 numpy)."""
  _check_matches(state, model)
  s = {k: np.asarray(v, np.float32) for k, v in state.items()}
  C, H = model.embed_dim, model.num_heads
  Dh = C // H

  def lin(prefix, out_shape=None):
    kernel = s[prefix + '.weight'].T
    out = {'kernel': kernel if out_shape is None else kernel.reshape(kernel.shape[0], *out_shape)}
    if prefix + '.bias' in s:
      out['bias'] = s[prefix + '.bias'] if out_shape is None else s[prefix + '.bias'].reshape(out_shape)
    return out

  def block(i):
    p = f'blocks.{i}.'
    if np.any(s[p + 'attn.zero_k_bias']):
      raise ValueError(f'{p}attn.zero_k_bias is not zero')
    attn = {
        'qkv': {'kernel': s[p + 'attn.mat_qkv.weight'].T.reshape(C, 3, H, Dh)},
        'q_bias': s[p + 'attn.q_bias'].reshape(H, Dh),
        'v_bias': s[p + 'attn.v_bias'].reshape(H, Dh),
        'proj': {'kernel': s[p + 'attn.proj.weight'].T.reshape(H, Dh, C),
                 'bias': s[p + 'attn.proj.bias']},
    }
    if model.attn_l2_norm:
      attn['scale_mul'] = s[p + 'attn.scale_mul_1H11'].reshape(H)
    out = {'attn': attn, 'fc1': lin(p + 'ffn.fc1'), 'fc2': lin(p + 'ffn.fc2')}
    if model.shared_aln:
      out['ada_gss'] = s[p + 'ada_gss'].reshape(6, C)
    else:
      out['ada_lin'] = lin(p + 'ada_lin.1', (6, C))
    return out

  params = {
      'word_embed': lin('word_embed'),
      'class_emb': s['class_emb.weight'],
      'pos_start': s['pos_start'].reshape(-1, C),
      'pos_embed': s['pos_1LC'].reshape(-1, C),
      'lvl_embed': s['lvl_embed.weight'],
      'head_nm': lin('head_nm.ada_lin.1', (2, C)),
      'head': lin('head'),
  }
  if model.shared_aln:
    params['shared_ada_lin'] = lin('shared_ada_lin.1', (6, C))
  blocks = [block(i) for i in range(model.depth)]
  if model.scan_layers:
    params['blocks'] = _tree_stack(blocks)
  else:
    params.update({f'blocks_{i}': b for i, b in enumerate(blocks)})
  return params


def var_params_to_torch(params: Mapping[str, Any], model: var_lib.VAR) -> dict[str, np.ndarray]:
  """Inverse of `var_params_from_torch`, buffers (lvl_1L, attn_bias_for_masking, zero_k_bias) included."""
  p = _to_numpy(params)
  C, D = model.embed_dim, model.depth
  if model.scan_layers:
    blocks = [_tree_index(p['blocks'], i) for i in range(D)]
  else:
    blocks = [p[f'blocks_{i}'] for i in range(D)]

  def lin(prefix, tree):
    out = {prefix + '.weight': tree['kernel'].reshape(tree['kernel'].shape[0], -1).T}
    if 'bias' in tree:
      out[prefix + '.bias'] = tree['bias'].reshape(-1)
    return out

  lvl_L = model.level_ids()
  state = {
      'pos_start': p['pos_start'][None],
      'pos_1LC': p['pos_embed'][None],
      'lvl_1L': lvl_L[None].astype(np.int64),
      'attn_bias_for_masking': np.where(model.block_causal_mask(), 0.0, -np.inf).astype(np.float32)[None, None],
      'class_emb.weight': p['class_emb'],
      'lvl_embed.weight': p['lvl_embed'],
      **lin('word_embed', p['word_embed']),
  }
  if model.shared_aln:
    state.update(lin('shared_ada_lin.1', p['shared_ada_lin']))
  for i, b in enumerate(blocks):
    q = f'blocks.{i}.'
    if model.attn_l2_norm:
      state[q + 'attn.scale_mul_1H11'] = b['attn']['scale_mul'].reshape(1, -1, 1, 1)
    state[q + 'attn.q_bias'] = b['attn']['q_bias'].reshape(C)
    state[q + 'attn.v_bias'] = b['attn']['v_bias'].reshape(C)
    state[q + 'attn.zero_k_bias'] = np.zeros(C, np.float32)
    state[q + 'attn.mat_qkv.weight'] = b['attn']['qkv']['kernel'].reshape(C, 3 * C).T
    state[q + 'attn.proj.weight'] = b['attn']['proj']['kernel'].reshape(C, C).T
    state[q + 'attn.proj.bias'] = b['attn']['proj']['bias']
    state.update(lin(q + 'ffn.fc1', b['fc1']))
    state.update(lin(q + 'ffn.fc2', b['fc2']))
    if model.shared_aln:
      state[q + 'ada_gss'] = b['ada_gss'].reshape(1, 1, 6, C)
    else:
      state.update(lin(q + 'ada_lin.1', b['ada_lin']))
  state.update(lin('head_nm.ada_lin.1', p['head_nm']))
  state.update(lin('head', p['head']))
  return {k: np.ascontiguousarray(v, np.float32) if k != 'lvl_1L' else v for k, v in state.items()}


def _to_numpy(tree):
  import flax.linen as nn
  import jax
  return jax.tree.map(np.asarray, nn.unbox(dict(tree)))


def _tree_stack(trees):
  import jax
  return jax.tree.map(lambda *xs: np.stack(xs), *trees)


def _tree_index(tree, i):
  import jax
  return jax.tree.map(lambda x: x[i], tree)


def load_var(path: str, overrides: Mapping[str, Any] | None = None):
  """(VAR module, params) from an official VAR state dict (.pth / .npz).

  The architecture is read off the state dict; num_heads, which only attn_l2_norm checkpoints record,
  otherwise follows the official rule embed_dim / 64 unless `overrides` gives it.
  """
  from var_jax import convert  # pylint: disable=g-import-not-at-top
  state = convert.read_state_dict(path)
  try:
    cfg = var_config_from_torch(state)
  except ValueError as e:
    raise ValueError(f'{path}: {e}') from None
  cfg.setdefault('num_heads', max(cfg['embed_dim'] // 64, 1))
  cfg.update(overrides or {})
  model = var_lib.VAR(**var_lib.resolve(cfg))
  try:
    return model, var_params_from_torch(state, model)
  except ValueError as e:
    raise ValueError(f'{path}: {e}') from None
