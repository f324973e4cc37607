"""Official state dict <-> Flax params: round trips, key errors, files, fingerprints, CLI."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from var_jax.models import tokenizer
from var_jax.weights import fixture
from var_jax.weights import state_dict as sd
from var_jax.weights import var as var_weights
from var_jax.weights import vqvae

TINY = dict(vocab_size=16, z_channels=4, ch=8, ch_mult=(1, 2), num_res_blocks=1, norm_groups=4,
            patch_nums=(1, 2, 4))


def _random_state_dict(vae, seed=0):
  """An official-layout state dict for `vae` with random values."""
  rng = np.random.RandomState(seed)
  params = jax.tree_util.tree_map(lambda s: rng.randn(*s.shape).astype(np.float32),
                                  vqvae.param_shapes(vae))
  return vqvae.to_state_dict(params, vae)


def _assert_same_pth(torch, original_path, back_path):
  """The two .pth state dicts hold the same keys, dtypes, shapes and values, bit for bit; returns the first."""
  original = torch.load(original_path, map_location='cpu', weights_only=True)
  back = torch.load(back_path, map_location='cpu', weights_only=True)
  assert sorted(back) == sorted(original)
  for key, value in original.items():
    assert back[key].dtype == value.dtype and back[key].shape == value.shape, key
    assert torch.equal(back[key], value), key
  return original


def test_pth_to_flax_to_pth_is_identical(fixture_a, fixture_a_data, tmp_path):
  torch = pytest.importorskip('torch', reason='torch is not installed: cannot read vae.pth')
  vae, _ = fixture_a_data.tokenizer()
  params, buffers = vqvae.from_state_dict(
      sd.read_state_dict(str(fixture_a / 'vae.pth')), vae)
  out = tmp_path / 'back.pth'
  sd.write_state_dict(str(out), vqvae.to_state_dict(params, vae, buffers))
  original = _assert_same_pth(torch, fixture_a / 'vae.pth', out)
  # The .npz twin of the fixture holds the same tensors.
  npz = sd.read_state_dict(str(fixture_a / 'vae_state.npz'))
  assert sorted(npz) == sorted(original)
  for key, value in npz.items():
    np.testing.assert_array_equal(value, original[key].numpy())


def test_layouts_conv_oihw_and_codebook(fixture_a, fixture_a_data):
  state = sd.read_state_dict(str(fixture_a / 'vae_state.npz'))
  vae, _ = fixture_a_data.tokenizer()
  params, _ = vqvae.from_state_dict(state, vae)
  w = state['encoder.conv_in.weight']  # (out, in, kh, kw)
  np.testing.assert_array_equal(params['encoder']['conv_in']['kernel'][1, 2, 0, 5], w[5, 0, 1, 2])
  np.testing.assert_array_equal(params['quantize']['embedding']['embedding'],
                                state['quantize.embedding.weight'])
  np.testing.assert_array_equal(params['encoder']['mid']['block_1']['norm1']['scale'],
                                state['encoder.mid.block_1.norm1.weight'])


@pytest.mark.parametrize('share,phi_keys', [
    (0, ['quantize.quant_resi.0', 'quantize.quant_resi.1', 'quantize.quant_resi.2']),
    (1, ['quantize.quant_resi.qresi']),
    (2, ['quantize.quant_resi.qresi_ls.0', 'quantize.quant_resi.qresi_ls.1'])])
def test_phi_key_names_follow_official_containers(share, phi_keys):
  # PhiNonShared is a ModuleList, PhiShared holds `qresi`, PhiPartiallyShared `qresi_ls`.
  vae = tokenizer.VQVAE(**TINY, share_quant_resi=share)
  state = _random_state_dict(vae)
  got = sorted({k.rsplit('.', 1)[0] for k in state if k.startswith('quantize.quant_resi')})
  assert got == phi_keys
  assert state['quantize.ema_vocab_hit_SV'].shape == (3, 16)


def test_bad_keys_are_listed_in_one_error():
  vae = tokenizer.VQVAE(**TINY)
  state = _random_state_dict(vae)
  del state['decoder.conv_out.bias']
  state['encoder.extra.weight'] = np.zeros(3, np.float32)
  state['encoder.conv_in.weight'] = np.zeros((8, 3, 1, 1), np.float32)
  with pytest.raises(ValueError) as e:
    vqvae.from_state_dict(state, vae, what='bad.npz')
  msg = str(e.value)
  assert msg.startswith('bad.npz does not match the model')
  assert 'missing: decoder.conv_out.bias' in msg
  assert 'unexpected: encoder.extra.weight' in msg
  assert 'mis-shaped: encoder.conv_in.weight (8, 3, 1, 1) (expected (8, 3, 3, 3))' in msg


def test_pth_without_torch_says_what_to_do(tmp_path, monkeypatch):
  path = tmp_path / 'vae.pth'
  path.write_bytes(b'')
  monkeypatch.setitem(sys.modules, 'torch', None)  # `import torch` now fails
  with pytest.raises(ImportError, match=r"needs torch: install the torch extra .* use a \.npz"):
    sd.read_state_dict(str(path))


def test_tokenizer_directory_round_trip_and_fingerprint(tmp_path):
  vae = tokenizer.VQVAE(**TINY, using_znorm=True, share_quant_resi=0)
  state = _random_state_dict(vae, seed=3)
  params, buffers = vqvae.from_state_dict(state, vae)
  vqvae.save(str(tmp_path / 'tok'), vae, params, buffers)
  loaded_vae, loaded = vqvae.load(str(tmp_path / 'tok'))
  assert loaded_vae == vae
  assert sd.fingerprint(loaded) == sd.fingerprint(params)
  loaded['quantize']['embedding']['embedding'][0, 0] += 1e-3
  assert sd.fingerprint(loaded) != sd.fingerprint(params)


def test_tokenizer_directory_with_unknown_config_key(tmp_path):
  (tmp_path / 'config.json').write_text(json.dumps({'vocab_sise': 10}))
  with pytest.raises(ValueError, match=r"unknown VQVAE attributes \['vocab_sise'\]"):
    vqvae.load(str(tmp_path))


def test_cli_converts_pth_to_directory_and_back(fixture_a, tmp_path):
  pytest.importorskip('torch', reason='torch is not installed: cannot read vae.pth')
  cfg = json.loads((fixture_a / 'config.json').read_text())
  tok_cfg = json.dumps(fixture.vae_attributes(cfg))
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  cmd = [sys.executable, '-m', 'var_jax.convert', f'--src={fixture_a / "vae.pth"}',
         f'--dst={tmp_path / "tok"}', f'--tokenizer_config={tok_cfg}']
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'fingerprint' in proc.stdout
  vae, params = vqvae.load(str(tmp_path / 'tok'))
  assert vae.patch_nums == tuple(cfg['patch_nums']) and vae.vocab_size == cfg['V']
  original = sd.read_state_dict(str(fixture_a / 'vae_state.npz'))
  written = sd.read_state_dict(str(tmp_path / 'tok' / 'vae_state.npz'))
  assert sorted(written) == sorted(original)
  for key, value in original.items():
    np.testing.assert_array_equal(written[key], value, err_msg=key)
  # A bare state dict with the wrong (default) configuration fails with the key list.
  proc = subprocess.run(cmd[:-1], capture_output=True, text=True, env=env, check=False)
  assert proc.returncode != 0 and 'mis-shaped' in proc.stderr


def test_keymap_linear_transpose_and_raw_parameters():
  # The generic mechanism other models build on: Linear (out, in) <-> kernel (in, out),
  # and raw parameters keep their names.
  keymap = sd.KeyMap(rules=((r'blocks_(\d+)', r'blocks.\1'),),
                          buffers={'lvl': lambda: np.arange(3)})
  template = {'blocks_1': {'fc': {'kernel': jax.ShapeDtypeStruct((3, 5), np.float32),
                                  'bias': jax.ShapeDtypeStruct((5,), np.float32)}},
              'pos_start': jax.ShapeDtypeStruct((1, 2), np.float32)}
  linear = np.arange(15, dtype=np.float32).reshape(5, 3)
  state = {'blocks.1.fc.weight': linear, 'blocks.1.fc.bias': np.ones(5, np.float32),
           'pos_start': np.zeros((1, 2), np.float32)}
  params, buffers = sd.state_dict_to_params(state, template, keymap, 'var.npz')
  np.testing.assert_array_equal(params['blocks_1']['fc']['kernel'], linear.T)
  np.testing.assert_array_equal(buffers['lvl'], np.arange(3))  # absent -> default
  back = sd.params_to_state_dict(params, keymap, buffers)
  assert sorted(back) == sorted([*state, 'lvl'])
  np.testing.assert_array_equal(back['blocks.1.fc.weight'], linear)


# ----------------------------------------------------------------------------- VAR

VAR_TINY = dict(vocab_size=32, cvae=8, patch_nums=(1, 2, 3), num_classes=5, depth=2, embed_dim=32,
                num_heads=2)
VAR_VARIANTS = {'official': {}, 'shared_aln': {'shared_aln': True}, 'no_l2_norm': {'attn_l2_norm': False}}


def _random_var_params(model, seed=0):
  from flax import linen as nn
  import jax.numpy as jnp
  L = model.seq_len - model.first_l
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1,), jnp.int32),
                          jnp.zeros((1, L, model.cvae)))['params']
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), nn.unbox(shapes))


def test_var_pth_to_flax_to_pth_is_identical(fixture_a, tmp_path):
  torch = pytest.importorskip('torch', reason='torch is not installed: cannot read var.pth')
  model, params = var_weights.load(str(fixture_a / 'var.pth'))
  assert (model.depth, model.embed_dim, model.num_heads, model.patch_nums) == (2, 128, 2, (1, 2, 3, 4))
  out = tmp_path / 'back.pth'
  sd.write_state_dict(str(out), var_weights.to_state_dict(params, model))
  _assert_same_pth(torch, fixture_a / 'var.pth', out)


@pytest.mark.parametrize('name', sorted(VAR_VARIANTS))
def test_var_round_trip_variants(name):
  from var_jax.models import var as var_lib
  model = var_lib.VAR(**VAR_TINY, **VAR_VARIANTS[name])
  params = _random_var_params(model, seed=7)
  state = var_weights.to_state_dict(params, model)
  assert ('shared_ada_lin.1.weight' in state) == model.shared_aln
  assert ('blocks.1.ada_gss' in state) == model.shared_aln
  assert ('blocks.1.ada_lin.1.weight' in state) != model.shared_aln
  assert ('blocks.0.attn.scale_mul_1H11' in state) == model.attn_l2_norm
  assert state['blocks.1.attn.mat_qkv.weight'].shape == (3 * 32, 32)
  cfg = var_weights.config_from_state_dict(state)
  assert (cfg['depth'], cfg['shared_aln'], cfg['attn_l2_norm']) == (2, model.shared_aln,
                                                                    model.attn_l2_norm)
  back = var_weights.from_state_dict(state, model)
  assert jax.tree.all(jax.tree.map(np.array_equal, back, params))
  unrolled = var_lib.VAR(**VAR_TINY, **VAR_VARIANTS[name], scan_layers=False)
  assert jax.tree.all(jax.tree.map(np.array_equal, var_weights.from_state_dict(state, unrolled),
                                   var_lib.unstack_layers(params)))


def test_var_rejects_other_architectures(tmp_path):
  from var_jax.models import var as var_lib
  model = var_lib.VAR(**VAR_TINY)
  state = var_weights.to_state_dict(_random_var_params(model), model)
  with pytest.raises(ValueError, match='has depth=2 but the model has depth=3'):
    var_weights.from_state_dict(state, var_lib.VAR(**dict(VAR_TINY, depth=3)))
  with pytest.raises(ValueError, match='per-block AdaLN .* shared_aln=True'):
    var_weights.from_state_dict(state, var_lib.VAR(**VAR_TINY, shared_aln=True))
  shared = var_lib.VAR(**VAR_TINY, shared_aln=True)
  with pytest.raises(ValueError, match='shared AdaLN .* shared_aln=False'):
    var_weights.from_state_dict(var_weights.to_state_dict(_random_var_params(shared), shared), model)
  with pytest.raises(ValueError, match='attn_l2_norm=True but the model has attn_l2_norm=False'):
    var_weights.from_state_dict(state, var_lib.VAR(**VAR_TINY, attn_l2_norm=False))
  path = tmp_path / 'vae_like.npz'
  np.savez(path, **{'encoder.conv_in.weight': np.zeros((1, 1, 3, 3), np.float32)})
  with pytest.raises(ValueError, match='vae_like.npz: not an official VAR state dict'):
    var_weights.load(str(path))


def test_convert_var_writes_npz(fixture_a, tmp_path):
  dst = tmp_path / 'var.npz'
  var_weights.convert(str(fixture_a / 'var_state.npz'), str(dst))
  want, got = np.load(fixture_a / 'var_state.npz'), np.load(dst)
  assert sorted(got.files) == sorted(want.files)
  for key in want.files:
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)
