"""Weights between official VAR PyTorch state dicts and var_jax Flax params.

Usage:
  python -m var_jax.convert --src vae_ch160v4096z32.pth --dst tokenizer_dir
  python -m var_jax.convert --src tokenizer_dir --dst vae.pth
  python -m var_jax.convert --model=var --src var_d16.pth --dst var_d16.npz

A model's mapping is a `KeyMap`: regex rules that turn a Flax module path into the
official module name, plus the official buffers that are not parameters. Leaves map by
name (`kernel`/`scale`/`embedding` -> `weight`, `bias` -> `bias`, others unchanged);
conv kernels go HWIO <-> OIHW and dense kernels (in, out) <-> (out, in). Expected names
and shapes come from `jax.eval_shape` of the module's init, so any configuration
converts. Another model adds its own KeyMap and thin `<model>_from/to_state_dict`.

On disk a tokenizer is a directory with `config.json` (VQVAE attributes) and
`vae_state.npz` (official key names), or a bare official `.pth` / `.npz` state dict
(default VQVAE configuration).
"""
import dataclasses
import hashlib
import json
import os
import re
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

from absl import app
from absl import flags
import flax
import jax
import jax.numpy as jnp
import numpy as np

from var_jax.models import quantizer
from var_jax.models import tokenizer
from var_jax.models import var as var_lib

StateDict = Dict[str, np.ndarray]
Params = Dict[str, Any]

_LEAF_NAMES = {'kernel': 'weight', 'scale': 'weight', 'embedding': 'weight', 'bias': 'bias'}


@dataclasses.dataclass(frozen=True)
class KeyMap:
  """How one model's Flax params correspond to its official state dict.

  Attributes:
    rules: (pattern, replacement) regex substitutions applied in order to the Flax
      module path joined with '/'; '/' then becomes '.'.
    buffers: official keys that hold no parameter (e.g. statistics), each with a
      factory for its default value; they are carried through, never shape-checked.
  """
  rules: Sequence[Tuple[str, str]]
  buffers: Mapping[str, Callable[[], np.ndarray]] = dataclasses.field(default_factory=dict)

  def official_key(self, path: Tuple[str, ...]) -> str:
    module = '/'.join(path[:-1])
    for pattern, replacement in self.rules:
      module = re.sub(pattern, replacement, module)
    # Raw parameters (no Linen layer) keep their own name, e.g. `pos_start`.
    leaf = _LEAF_NAMES.get(path[-1], path[-1])
    return f"{module.replace('/', '.')}.{leaf}" if module else leaf


def _official_shape(shape: Tuple[int, ...], leaf: str) -> Tuple[int, ...]:
  if leaf == 'kernel' and len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  if leaf == 'kernel' and len(shape) == 2:
    return (shape[1], shape[0])
  return tuple(shape)


def _to_official(x: np.ndarray, leaf: str) -> np.ndarray:
  if leaf == 'kernel' and x.ndim == 4:
    return np.transpose(x, (3, 2, 0, 1))  # conv HWIO -> OIHW
  if leaf == 'kernel' and x.ndim == 2:
    return np.transpose(x)  # dense (in, out) -> (out, in)
  return x


def _from_official(x: np.ndarray, leaf: str) -> np.ndarray:
  if leaf == 'kernel' and x.ndim == 4:
    return np.transpose(x, (2, 3, 1, 0))  # OIHW -> HWIO
  if leaf == 'kernel' and x.ndim == 2:
    return np.transpose(x)
  return x


def _flat_leaves(shapes_tree: Params) -> Dict[Tuple[str, ...], Any]:
  return {tuple(k): v for k, v in flax.traverse_util.flatten_dict(shapes_tree).items()}


def state_dict_to_params(state_dict: Mapping[str, Any], template: Params, keymap: KeyMap,
                         what: str) -> Tuple[Params, StateDict]:
  """Official state dict -> (Flax params shaped like `template`, buffers).

  Args:
    state_dict: official key -> array.
    template: Flax params tree of arrays or ShapeDtypeStructs (the expected layout).
    keymap: the model's KeyMap.
    what: names the source in errors (e.g. the file path).

  Raises:
    ValueError listing every missing, unexpected and mis-shaped key.
  """
  expected = {keymap.official_key(path): (path, leaf)
              for path, leaf in _flat_leaves(template).items()}
  missing = sorted(set(expected) - set(state_dict))
  unexpected = sorted(set(state_dict) - set(expected) - set(keymap.buffers))
  flat, misshaped = {}, []
  for key, (path, leaf) in expected.items():
    if key not in state_dict:
      continue
    want = _official_shape(tuple(leaf.shape), path[-1])
    if tuple(np.shape(state_dict[key])) != want:
      misshaped.append(f'{key} {tuple(np.shape(state_dict[key]))} (expected {want})')
      continue
    flat[path] = _from_official(np.asarray(state_dict[key], np.float32), path[-1])
  problems = [f'{name}: {", ".join(keys)}' for name, keys in
              (('missing', missing), ('unexpected', unexpected), ('mis-shaped', misshaped))
              if keys]
  if problems:
    raise ValueError(f'{what} does not match the model: ' + '; '.join(problems))
  buffers = {k: np.asarray(state_dict[k]) if k in state_dict else default()
             for k, default in keymap.buffers.items()}
  return flax.traverse_util.unflatten_dict(flat), buffers


def params_to_state_dict(params: Params, keymap: KeyMap,
                         buffers: Optional[Mapping[str, np.ndarray]] = None) -> StateDict:
  """Flax params (+ buffers, defaults where absent) -> official state dict of numpy."""
  out = {keymap.official_key(path): _to_official(np.asarray(leaf), path[-1])
         for path, leaf in _flat_leaves(params).items()}
  buffers = dict(buffers or {})
  for key, default in keymap.buffers.items():
    out[key] = np.asarray(buffers.pop(key)) if key in buffers else default()
  if buffers:
    raise ValueError(f'unknown buffers for this model: {sorted(buffers)}')
  return out


# ----------------------------------------------------------------------------- VQVAE


def vae_keymap(vae: tokenizer.VQVAE) -> KeyMap:
  """KeyMap of the tokenizer; the phi container's name depends on the sharing mode."""
  phi_container = {0: 'quant_resi.', 1: 'quant_resi.qresi'}.get(
      vae.share_quant_resi, 'quant_resi.qresi_ls.')
  # Fully shared: one phi, no index in the official name.
  phi_rule = (r'quantize/phis_(\d+)',
              'quantize/' + phi_container + ('' if vae.share_quant_resi == 1 else r'\1'))
  num_scales = len(vae.patch_nums)
  return KeyMap(
      rules=(
          (r'(down|up)_(\d+)_(block|attn)_(\d+)', r'\1.\2.\3.\4'),
          (r'(down|up)_(\d+)_(downsample|upsample)', r'\1.\2.\3'),
          phi_rule,
      ),
      buffers={'quantize.ema_vocab_hit_SV':
               lambda: np.zeros((num_scales, vae.vocab_size), np.float32)})


def vae_param_shapes(vae: tokenizer.VQVAE) -> Params:
  """The tokenizer's params tree as ShapeDtypeStructs (nothing is computed)."""
  img = jax.ShapeDtypeStruct((1, vae.image_size, vae.image_size, 3), jnp.float32)
  return jax.eval_shape(vae.init, jax.random.key(0), img)['params']


def vae_from_state_dict(state_dict: Mapping[str, Any], vae: tokenizer.VQVAE,
                        what: str = 'tokenizer state dict') -> Tuple[Params, StateDict]:
  """Official VQVAE state dict -> (params, buffers)."""
  return state_dict_to_params(state_dict, vae_param_shapes(vae), vae_keymap(vae), what)


def vae_to_state_dict(params: Params, vae: tokenizer.VQVAE,
                      buffers: Optional[Mapping[str, np.ndarray]] = None) -> StateDict:
  """Tokenizer params -> official VQVAE state dict."""
  return params_to_state_dict(params, vae_keymap(vae), buffers)


# ----------------------------------------------------------------------------- files


def read_state_dict(path: str) -> StateDict:
  """Reads an official `.pth` (needs torch) or `.npz` state dict as numpy arrays."""
  if path.endswith('.npz'):
    with np.load(path) as data:
      return {k: data[k] for k in data.files}
  if not path.endswith('.pth'):
    raise ValueError(f'{path}: expected a .pth or .npz state dict')
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError(
        f'{path} is a PyTorch checkpoint and reading it needs torch: install the torch '
        "extra (pip install 'var_jax[torch]') or use a .npz with the same keys") from None
  state = torch.load(path, map_location='cpu', weights_only=True)
  if not isinstance(state, Mapping):
    raise ValueError(f'{path}: expected a state dict (key -> tensor), got {type(state)}')
  return {k: v.detach().cpu().numpy() for k, v in state.items()}


def write_state_dict(path: str, state_dict: Mapping[str, np.ndarray]) -> None:
  """Writes a state dict as `.npz`, or as `.pth` (needs torch) with torch.save."""
  if path.endswith('.npz'):
    np.savez(path, **state_dict)
  elif path.endswith('.pth'):
    import torch  # pylint: disable=g-import-not-at-top
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_dict.items()},
               path)
  else:
    raise ValueError(f'{path}: expected a .pth or .npz file name')


_VAE_STATE_FILES = ('vae_state.npz', 'vae.pth')


def tokenizer_config(overrides: Optional[Mapping[str, Any]] = None,
                     what: str = 'tokenizer config') -> Dict[str, Any]:
  """VQVAE attributes: defaults updated with `overrides`; unknown names are an error."""
  fields = {f.name: f.default for f in dataclasses.fields(tokenizer.VQVAE)
            if f.name not in ('parent', 'name')}
  unknown = sorted(set(overrides or {}) - set(fields))
  if unknown:
    raise ValueError(f'{what}: unknown VQVAE attributes {unknown}; known: {sorted(fields)}')
  cfg = {**fields, **(overrides or {})}
  for key in ('ch_mult', 'patch_nums'):
    cfg[key] = tuple(cfg[key])
  quantizer.check_patch_nums(cfg['patch_nums'])
  return cfg


def read_tokenizer(path: str) -> Tuple[Dict[str, Any], StateDict]:
  """(VQVAE attributes, official state dict) from a tokenizer directory or bare file."""
  if not os.path.isdir(path):
    return tokenizer_config(), read_state_dict(path)
  config_path = os.path.join(path, 'config.json')
  if not os.path.exists(config_path):
    raise ValueError(f'{path}: tokenizer directory has no config.json')
  with open(config_path) as f:
    cfg = tokenizer_config(json.load(f), what=config_path)
  for name in _VAE_STATE_FILES:
    if os.path.exists(os.path.join(path, name)):
      return cfg, read_state_dict(os.path.join(path, name))
  raise ValueError(f'{path}: tokenizer directory has none of {list(_VAE_STATE_FILES)}')


def load_tokenizer(path: str) -> Tuple[tokenizer.VQVAE, Params]:
  """(VQVAE module, params) from a tokenizer directory or a bare official state dict."""
  cfg, state_dict = read_tokenizer(path)
  vae = tokenizer.VQVAE(**cfg)
  params, _ = vae_from_state_dict(state_dict, vae, what=path)
  return vae, params


def save_tokenizer(path: str, vae: tokenizer.VQVAE, params: Params,
                   buffers: Optional[Mapping[str, np.ndarray]] = None) -> None:
  """Writes a tokenizer directory (config.json + vae_state.npz), or a bare .pth/.npz."""
  state_dict = vae_to_state_dict(params, vae, buffers)
  if path.endswith(('.pth', '.npz')):
    write_state_dict(path, state_dict)
    return
  os.makedirs(path, exist_ok=True)
  cfg = {f.name: getattr(vae, f.name) for f in dataclasses.fields(tokenizer.VQVAE)
         if f.name not in ('parent', 'name')}
  with open(os.path.join(path, 'config.json'), 'w') as f:
    json.dump({k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}, f,
              indent=1)
  write_state_dict(os.path.join(path, 'vae_state.npz'), state_dict)


def fingerprint(params: Params) -> str:
  """Short stable hash of a params tree (names, shapes, dtypes and values)."""
  digest = hashlib.sha256()
  for path, leaf in sorted(_flat_leaves(params).items()):
    leaf = np.ascontiguousarray(np.asarray(leaf))
    digest.update(f'{"/".join(path)}:{leaf.shape}:{leaf.dtype};'.encode())
    digest.update(leaf.tobytes())
  return digest.hexdigest()[:16]


# ----------------------------------------------------------------------------- VAR
#
# The VAR layout needs reshapes a KeyMap does not express: stacked layers (leading axis under
# `blocks` when scanned), qkv kernels (C, 3, heads, head_dim), proj (heads, head_dim, C), AdaLN
# linears (D, 6 or 2, C) and 1-row position params without their leading 1.


def _var_blocks(state_dict: Mapping[str, Any]) -> int:
  ids = {int(m.group(1)) for k in state_dict if (m := re.match(r'blocks\.(\d+)\.', k))}
  return max(ids) + 1 if ids else 0


def var_config_from_state_dict(state_dict: Mapping[str, Any],
                               what: str = 'VAR state dict') -> Dict[str, Any]:
  """VAR attributes recorded by an official state dict.

  num_heads is only recorded by attn_l2_norm checkpoints (scale_mul_1H11); otherwise it is absent.
  """
  missing = [k for k in ('class_emb.weight', 'head.weight', 'word_embed.weight', 'lvl_1L',
                         'blocks.0.ffn.fc1.weight') if k not in state_dict]
  if missing:
    raise ValueError(f'{what}: not an official VAR state dict (missing {missing})')
  counts = np.bincount(np.asarray(state_dict['lvl_1L']).reshape(-1))
  fc1 = np.shape(state_dict['blocks.0.ffn.fc1.weight'])
  cfg = {
      'vocab_size': int(np.shape(state_dict['head.weight'])[0]),
      'cvae': int(np.shape(state_dict['word_embed.weight'])[1]),
      'patch_nums': tuple(int(round(np.sqrt(c))) for c in counts),
      'num_classes': int(np.shape(state_dict['class_emb.weight'])[0]) - 1,
      'depth': _var_blocks(state_dict),
      'embed_dim': int(np.shape(state_dict['class_emb.weight'])[1]),
      'mlp_ratio': fc1[0] / fc1[1],
      'shared_aln': 'shared_ada_lin.1.weight' in state_dict,
      'attn_l2_norm': 'blocks.0.attn.scale_mul_1H11' in state_dict,
  }
  if cfg['attn_l2_norm']:
    cfg['num_heads'] = int(np.shape(state_dict['blocks.0.attn.scale_mul_1H11'])[1])
  return cfg


def _check_var_matches(state_dict: Mapping[str, Any], model: var_lib.VAR, what: str) -> None:
  got = var_config_from_state_dict(state_dict, what)
  kind = lambda s: 'shared AdaLN (shared_ada_lin + ada_gss)' if s else 'per-block AdaLN (ada_lin)'
  if got['shared_aln'] != model.shared_aln:
    raise ValueError(f"{what} uses {kind(got['shared_aln'])} but the model has "
                     f'shared_aln={model.shared_aln}')
  for key in ('depth', 'attn_l2_norm', 'embed_dim', 'num_heads', 'vocab_size', 'cvae',
              'num_classes', 'patch_nums', 'mlp_ratio'):
    have = tuple(model.patch_nums) if key == 'patch_nums' else getattr(model, key)
    if key in got and got[key] != have:
      raise ValueError(f'{what} has {key}={got[key]} but the model has {key}={have}')


def var_from_state_dict(state_dict: Mapping[str, Any], model: var_lib.VAR,
                        what: str = 'VAR state dict') -> Params:
  """Official VAR state dict -> `model`'s params (scanned or unrolled, as the model is built)."""
  _check_var_matches(state_dict, model, what)
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
      raise ValueError(f'{what}: {p}attn.zero_k_bias is not zero')
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

  params = {'word_embed': linear('word_embed'), 'class_emb': s['class_emb.weight'],
            'pos_start': s['pos_start'].reshape(-1, C), 'pos_embed': s['pos_1LC'].reshape(-1, C),
            'lvl_embed': s['lvl_embed.weight'], 'head_nm': linear('head_nm.ada_lin.1', (2, C)),
            'head': linear('head')}
  if model.shared_aln:
    params['shared_ada_lin'] = linear('shared_ada_lin.1', (6, C))
  blocks = [block(i) for i in range(model.depth)]
  if model.scan_layers:
    params['blocks'] = jax.tree.map(lambda *xs: np.stack(xs), *blocks)
  else:
    params.update({f'blocks_{i}': b for i, b in enumerate(blocks)})
  _check_var_shapes(params, model, what)
  return params


def _check_var_shapes(params: Params, model: var_lib.VAR, what: str) -> None:
  L = model.seq_len - model.first_l
  want = flax.linen.unbox(jax.eval_shape(
      model.init, jax.random.key(0), jnp.zeros((1,), jnp.int32),
      jnp.zeros((1, L, model.cvae)))['params'])
  want, got = _flat_leaves(want), _flat_leaves(params)
  bad = sorted('/'.join(k) for k in set(want) | set(got)
               if k not in want or k not in got or tuple(want[k].shape) != np.shape(got[k]))
  if bad:
    raise ValueError(f'{what} does not match the model at: {", ".join(bad)}')


def var_to_state_dict(params: Params, model: var_lib.VAR) -> StateDict:
  """VAR params -> official state dict, buffers (lvl_1L, attn_bias_for_masking, zero_k_bias)
  included."""
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


def load_var(path: str, overrides: Optional[Mapping[str, Any]] = None
             ) -> Tuple[var_lib.VAR, Params]:
  """(VAR module, params) from an official VAR state dict (.pth / .npz).

  The architecture is read off the state dict; num_heads, recorded only by attn_l2_norm
  checkpoints, otherwise follows the official rule embed_dim / 64 unless `overrides` sets it.
  """
  state_dict = read_state_dict(path)
  cfg = var_config_from_state_dict(state_dict, what=path)
  cfg.setdefault('num_heads', max(cfg['embed_dim'] // 64, 1))
  cfg.update(overrides or {})
  model = var_lib.VAR(**var_lib.resolve(cfg))
  return model, var_from_state_dict(state_dict, model, what=path)


def convert_var(src: str, dst: str, config_json: Optional[str] = None) -> str:
  """Official VAR state dict `src` -> `dst` (.pth / .npz) through Flax params; returns the
  params fingerprint."""
  model, params = load_var(src, json.loads(config_json) if config_json else None)
  write_state_dict(dst, var_to_state_dict(params, model))
  return fingerprint(params)


# ----------------------------------------------------------------------------- CLI

_SRC = flags.DEFINE_string('src', None, 'tokenizer directory, or official .pth/.npz.')
_DST = flags.DEFINE_string('dst', None, 'output: a directory (config.json + vae_state.npz) '
                           'or a .pth/.npz state dict.')
_CONFIG = flags.DEFINE_string('tokenizer_config', None,
                              'JSON of VQVAE attributes for a bare .pth/.npz --src '
                              '(default: the released configuration).')
_MODEL = flags.DEFINE_enum('model', 'tokenizer', ['tokenizer', 'var'],
                           'What --src holds: a tokenizer, or a VAR transformer state dict '
                           '(--dst then is a .pth/.npz).')
_VAR_CONFIG = flags.DEFINE_string('var_config', None,
                                  'JSON of VAR attributes the state dict does not record '
                                  '(num_heads without attn_l2_norm).')


def convert_tokenizer(src: str, dst: str, config_json: Optional[str] = None) -> str:
  """Converts `src` to `dst` through Flax params (so keys and shapes are validated).

  Returns the params fingerprint.
  """
  cfg, state_dict = read_tokenizer(src)
  if config_json is not None:
    if os.path.isdir(src):
      raise ValueError(f'--tokenizer_config is for bare state dicts; {src} has config.json')
    cfg = tokenizer_config(json.loads(config_json), what='--tokenizer_config')
  vae = tokenizer.VQVAE(**cfg)
  params, buffers = vae_from_state_dict(state_dict, vae, what=src)
  save_tokenizer(dst, vae, params, buffers)
  return fingerprint(params)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not _SRC.value or not _DST.value:
    raise app.UsageError('--src and --dst are required')
  if _MODEL.value == 'var':
    digest = convert_var(_SRC.value, _DST.value, _VAR_CONFIG.value)
  else:
    digest = convert_tokenizer(_SRC.value, _DST.value, _CONFIG.value)
  print(f'{_SRC.value} -> {_DST.value} (fingerprint {digest})')


def run() -> None:
  app.run(main)


if __name__ == '__main__':
  run()
