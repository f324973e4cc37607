"""VQVAE tokenizer: official-code parity (fixture A), other configurations, jit, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from var_jax.models import resize
from var_jax.models import tokenizer
from var_jax.weights import vqvae


def _nchw(x):
  return np.asarray(x).transpose(0, 3, 1, 2)


def _nhwc(x):
  return jnp.asarray(np.asarray(x).transpose(0, 2, 3, 1))


# ---------------------------------------------------------------- fixture A parity


@pytest.fixture(scope='module')
def fixture_a_outputs(fixture_a_data):
  cfg = fixture_a_data.config
  vae, params = fixture_a_data.tokenizer()
  expected = fixture_a_data.expected

  @jax.jit
  def run(p, img):
    apply = lambda method, *a: vae.apply({'params': p}, *a, method=method)
    f = apply('encode', img)
    idx, fhats = apply('residual_quantize', f)
    return dict(enc_f=f, idx=idx, fhat=fhats, recon=apply('fhat_to_img', fhats[-1]),
                recon_from_idx=apply('fhat_to_img', apply('idx_to_fhat', idx)),
                var_input=apply('idx_to_var_input', idx))

  return run(params, _nhwc(expected['input_img'])), expected, len(cfg['patch_nums'])


def _assert_close(got, want, key):
  err = np.abs(np.asarray(got) - want).max() / max(1.0, np.abs(want).max())
  assert err <= 1e-4, f'{key}: scaled max error {err}'


def test_fixture_a_token_indices_exact(fixture_a_outputs):
  out, expected, num_scales = fixture_a_outputs
  for k in range(num_scales):
    np.testing.assert_array_equal(out['idx'][k], expected[f'idx_{k}'], err_msg=f'idx_{k}')


def test_fixture_a_features_and_images(fixture_a_outputs):
  out, expected, num_scales = fixture_a_outputs
  _assert_close(_nchw(out['enc_f']), expected['enc_f'], 'enc_f')
  for k in range(num_scales):
    _assert_close(_nchw(out['fhat'][k]), expected[f'fhat_{k}'], f'fhat_{k}')
  _assert_close(_nchw(out['recon']), expected['recon'], 'recon')
  _assert_close(_nchw(out['recon_from_idx']), expected['recon_from_idx'], 'recon_from_idx')
  _assert_close(out['var_input'], expected['var_input'], 'var_input')


# ---------------------------------------------------------------- other configurations

# One resolution level (no down/upsampling; fixture A covers those) keeps compiles short.
TINY = dict(vocab_size=32, z_channels=4, ch=8, ch_mult=(1,), num_res_blocks=1, norm_groups=4)
CONFIGS = {
    'znorm_unshared': dict(using_znorm=True, share_quant_resi=0, patch_nums=(1, 2, 4)),
    'shared': dict(share_quant_resi=1, patch_nums=(1, 3, 4)),
    'partial_negative_resi': dict(share_quant_resi=2, quant_resi=-0.5, patch_nums=(2, 3, 5)),
    'no_phi': dict(quant_resi=0.0, patch_nums=(1, 2, 3, 6)),
}


def _random_params(vae, seed=0):
  """Random weights of the right shapes, drawn on the host (compiling init is slow)."""
  rng = np.random.RandomState(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      return rng.randn(*leaf.shape).astype(np.float32) / np.sqrt(np.prod(leaf.shape[:-1]))
    if name == 'scale':
      return (1 + 0.1 * rng.randn(*leaf.shape)).astype(np.float32)
    return rng.randn(*leaf.shape).astype(np.float32) * (1.0 if name == 'embedding' else 0.1)

  return jax.tree_util.tree_map_with_path(draw, vqvae.param_shapes(vae))


def _tiny(name):
  vae = tokenizer.VQVAE(**{**TINY, **CONFIGS[name]})
  size = vae.image_size
  img = np.random.RandomState(1).uniform(-1, 1, (2, size, size, 3)).astype(np.float32)
  return vae, _random_params(vae), jnp.asarray(img)


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_tiny_config_consistency(name):
  vae, params, img = _tiny(name)
  pns = vae.patch_nums

  @jax.jit
  def run(p, img):
    apply = lambda method, *a: vae.apply({'params': p}, *a, method=method)
    idx, fhats = apply('residual_quantize', apply('encode', img))
    f_hat = jnp.zeros_like(fhats[0])
    steps = []
    for k, idx_Bl in enumerate(idx):
      h = apply('embed', idx_Bl).reshape(idx_Bl.shape[0], pns[k], pns[k], -1)
      f_hat, nxt = apply('ar_step', k, f_hat, h)
      steps.append((f_hat, nxt))
    return dict(idx=idx, fhats=fhats, from_idx=apply('idx_to_fhat', idx, True),
                var_input=apply('idx_to_var_input', idx), steps=steps)

  out = run(params, img)
  num_scales, c = len(pns), vae.z_channels
  for k in range(num_scales):
    assert out['idx'][k].shape == (2, pns[k] ** 2) and out['idx'][k].dtype == jnp.int32
    # Decoding the indices rebuilds the quantizer's own f_hat, and so does ar_step.
    np.testing.assert_allclose(out['from_idx'][k], out['fhats'][k], atol=1e-5)
    np.testing.assert_allclose(out['steps'][k][0], out['fhats'][k], atol=1e-5)
  assert out['steps'][-1][1] is None
  x = np.asarray(out['var_input'])
  assert x.shape == (2, sum(p * p for p in pns) - pns[0] ** 2, c)
  start = 0
  for k in range(1, num_scales):
    m = resize.area_matrix(pns[-1], pns[k])
    want = np.einsum('oh,pw,bhwc->bopc', m, m, np.asarray(out['fhats'][k - 1]))
    np.testing.assert_allclose(x[:, start:start + pns[k] ** 2], want.reshape(2, -1, c), atol=1e-5)
    np.testing.assert_allclose(out['steps'][k - 1][1], want, atol=1e-5)
    start += pns[k] ** 2


def test_phi_count_follows_sharing_mode():
  counts = {}
  for name in sorted(CONFIGS):
    _, params, _ = _tiny(name)
    counts[name] = sorted(k for k in params['quantize'] if k.startswith('phis_'))
  assert counts == {'znorm_unshared': ['phis_0', 'phis_1', 'phis_2'], 'shared': ['phis_0'],
                    'partial_negative_resi': ['phis_0', 'phis_1'], 'no_phi': []}


def test_training_forward_loss_and_gradients():
  vae, params, img = _tiny('shared')

  def loss_fn(p):
    recon, vq, aux = vae.apply({'params': p}, img, train=True)
    return jnp.mean(jnp.square(recon - img)) + vq, (vq, aux)

  grads, (vq, aux) = jax.jit(jax.grad(loss_fn, has_aux=True))(params)
  assert np.isfinite(vq) and vq > 0
  assert [i.shape[1] for i in aux['idx']] == [p * p for p in vae.patch_nums]
  assert len(aux['fhat']) == 3 and aux['fhat'][-1].shape == aux['f'].shape
  # Reconstruction reaches the encoder through the straight-through estimator; the VQ
  # loss reaches the codebook and phi.
  for path in (('encoder', 'conv_in', 'kernel'), ('quantize', 'embedding', 'embedding'),
               ('quantize', 'phis_0', 'kernel'), ('decoder', 'conv_out', 'kernel')):
    g = grads
    for key in path:
      g = g[key]
    assert float(jnp.abs(g).max()) > 0, path


# ---------------------------------------------------------------- compilation


def test_encode_decode_trace_once_per_shape_without_loops():
  vae, params, img = _tiny('znorm_unshared')
  traces = []

  def encode(p, img):
    traces.append('encode')
    return vae.apply({'params': p}, img, method='img_to_idx')

  def decode(p, idx):
    traces.append('decode')
    apply = lambda method, *a: vae.apply({'params': p}, *a, method=method)
    return apply('fhat_to_img', apply('idx_to_fhat', idx))

  encode_jit, decode_jit = jax.jit(encode), jax.jit(decode)
  idx = encode_jit(params, img)
  decode_jit(params, idx)
  encode_jit(params, img + 0.5)
  decode_jit(params, [jnp.flip(i, 0) for i in idx])
  assert traces == ['encode', 'decode']
  recon = np.asarray(decode_jit(params, idx))
  assert recon.shape == img.shape and recon.min() >= -1 and recon.max() <= 1
  encode_jit(params, img[:1])
  assert traces == ['encode', 'decode', 'encode']
  # Scales are unrolled at trace time: no loop primitive in the compiled programs.
  for fn, arg in ((encode, img), (decode, idx)):
    text = str(jax.make_jaxpr(fn)(params, arg))
    assert 'while[' not in text and 'scan[' not in text


# ---------------------------------------------------------------- errors


def test_image_size_mismatch_is_a_clear_error():
  vae, params, img = _tiny('shared')
  msg = r'image batch must be \(B, 4, 4, 3\) for patch_nums\[-1\]=4'
  with pytest.raises(ValueError, match=msg):
    vae.apply({'params': params}, img[:, :3, :3], method='img_to_idx')


def test_patch_nums_not_increasing_is_a_clear_error():
  vae = tokenizer.VQVAE(**{**TINY, 'patch_nums': (1, 3, 2, 4)})
  with pytest.raises(ValueError, match='patch_nums must be positive and strictly increasing'):
    vae.init(jax.random.key(0), jnp.zeros((1, 4, 4, 3)))
