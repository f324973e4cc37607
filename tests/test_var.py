"""VAR transformer: official parity (fixture A), block-causal mask, scan/unroll, init, dtypes, errors."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from var_jax.models import var as var_lib
from var_jax.models.var import VAR
from var_jax.weights import var as var_weights

TINY = dict(vocab_size=32, cvae=8, patch_nums=(1, 2, 3), num_classes=5, depth=2, embed_dim=32,
            num_heads=2, cond_drop_rate=0.0)
AXES = {'embed', 'heads', 'kv', 'mlp', 'vocab', 'layers', None}


def _init(model, batch=2, seed=0):
  L = model.seq_len - model.first_l
  variables = jax.jit(model.init)(jax.random.key(seed), jnp.zeros((batch,), jnp.int32),
                                  jnp.zeros((batch, L, model.cvae)))
  return variables['params']


def _random_params(model, seed=0, scale=0.3):
  """Unit-scale random weights of the model's shapes (the official init makes blocks near-identities,
  which would hide attention and AdaLN bugs)."""
  L = model.seq_len - model.first_l
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1,), jnp.int32),
                          jnp.zeros((1, L, model.cvae)))['params']
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (scale * rng.normal(size=s.shape)).astype(np.float32), nn.unbox(shapes))


def _forward(model):
  return jax.jit(lambda p, label, x: model.apply({'params': p}, label, x))


def _inputs(model, batch=2, seed=1):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(batch, model.seq_len - model.first_l, model.cvae)).astype(np.float32)
  return jnp.asarray(rng.integers(0, model.num_classes, batch), jnp.int32), jnp.asarray(x)


@pytest.fixture(scope='module')
def tiny():
  """(model, boxed params, jitted forward) of the TINY config, built once for the module."""
  model = VAR(**TINY)
  return model, _random_params(model), _forward(model)


@pytest.fixture(scope='module')
def fixture_model(fixture_a):
  state = dict(np.load(fixture_a / 'var_state.npz'))
  model = VAR(**var_weights.config_from_state_dict(state))
  return model, var_weights.from_state_dict(state, model), np.load(fixture_a / 'expected.npz')


@pytest.mark.parity
def test_logits_match_official(fixture_model):
  model, params, e = fixture_model
  logits = np.asarray(_forward(model)(params, jnp.asarray(e['labels'], jnp.int32),
                                      jnp.asarray(e['var_input'])))
  want = e['logits']
  assert logits.shape == want.shape
  assert np.abs(logits - want).max() <= 1e-4 * max(1.0, np.abs(want).max())


def test_block_causal_mask(tiny):
  model, params, f = tiny
  label, x = _inputs(model)
  x = np.asarray(x)
  base = np.asarray(f(params, label, jnp.asarray(x)))
  bounds = var_lib.scale_bounds(model.patch_nums)
  for k in range(len(bounds) - 1):
    end = bounds[k][1]
    x2 = x.copy()
    x2[:, end - model.first_l:] += np.random.default_rng(k).normal(size=x2[:, end - model.first_l:].shape)
    out = np.asarray(f(params, label, jnp.asarray(x2)))
    np.testing.assert_allclose(out[:, :end], base[:, :end], atol=1e-6, err_msg=f'scale {k} saw the future')
    # Every later position sees the change (its own input or an earlier one of its scale).
    assert np.abs(out[:, end:] - base[:, end:]).max(-1).min() > 1e-4


def test_scanned_equals_unrolled(tiny):
  model, params, forward = tiny
  label, x = _inputs(model)
  want = forward(params, label, x)
  unrolled = VAR(**TINY, scan_layers=False)
  got = _forward(unrolled)(var_lib.unstack_layers(params), label, x)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
  restacked = var_lib.stack_layers(var_lib.unstack_layers(params), TINY['depth'])
  assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), restacked, params))


def test_remat_same_gradients(tiny):
  model, params, _ = tiny
  label, x = _inputs(model)

  def grads(model, params):
    loss = lambda p: jnp.mean(model.apply({'params': p}, label, x) ** 2)
    return jax.jit(jax.grad(loss))(params)

  want = grads(model, params)
  got = grads(VAR(**TINY, remat_policy='full'), params)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)


def test_bfloat16_close_to_float32(tiny):
  model, params, forward = tiny
  label, x = _inputs(model)
  want = np.asarray(forward(params, label, x))
  got = _forward(VAR(**TINY, dtype='bfloat16'))(params, label, x)
  assert got.dtype == jnp.float32
  bf16_params = jax.tree.leaves(params)
  assert all(p.dtype == jnp.float32 for p in bf16_params)
  assert np.abs(np.asarray(got) - want).max() < 0.05 * max(1.0, np.abs(want).max())


def test_params_have_logical_axes_and_official_init():
  boxed = _init(VAR(**TINY))
  for path, leaf in jax.tree_util.tree_leaves_with_path(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned)):
    assert isinstance(leaf, nn.LogicallyPartitioned), path
    assert len(leaf.names) == leaf.value.ndim and set(leaf.names) <= AXES, (path, leaf.names)
  p = nn.unbox(boxed)
  assert boxed['blocks']['fc1']['kernel'].names[0] == 'layers'
  std = math.sqrt(1 / (3 * TINY['embed_dim']))
  embeds = np.concatenate([p[k] for k in ('class_emb', 'pos_start', 'pos_embed', 'lvl_embed')])
  np.testing.assert_allclose(np.std(embeds), std, rtol=0.1)
  np.testing.assert_allclose(np.std(p['blocks']['fc1']['kernel']), std, rtol=0.1)
  depth_gain = 1 / math.sqrt(2 * TINY['depth'])
  np.testing.assert_allclose(np.std(p['blocks']['fc2']['kernel']), std * depth_gain, rtol=0.1)
  np.testing.assert_allclose(np.std(p['blocks']['attn']['proj']['kernel']), std * depth_gain, rtol=0.1)
  np.testing.assert_allclose(np.std(p['head']['kernel']), std * 0.02, rtol=0.1)
  np.testing.assert_allclose(np.std(p['head_nm']['kernel']), std * 0.5, rtol=0.1)
  ada = p['blocks']['ada_lin']['kernel']  # (layers, D, 6, C): gamma rows 0-1, scale/shift rows 2-5
  np.testing.assert_allclose(np.std(ada[:, :, :2]), std * 1e-5, rtol=0.1)
  np.testing.assert_allclose(np.std(ada[:, :, 2:]), std * 0.5, rtol=0.1)
  np.testing.assert_allclose(p['blocks']['attn']['scale_mul'], math.log(4.0), rtol=1e-6)
  for bias in (p['blocks']['attn']['q_bias'], p['blocks']['fc1']['bias'], p['head']['bias']):
    assert not np.any(bias)


def test_class_dropout_and_drop_path_use_dropout_rng(tiny):
  _, params, _ = tiny
  model = VAR(**dict(TINY, cond_drop_rate=1.0, drop_path_rate=0.5))
  label, x = _inputs(model)
  train = jax.jit(lambda p, l, r: model.apply({'params': p}, l, x, train=True, rngs={'dropout': r}))
  a = np.asarray(train(params, label, jax.random.key(1)))
  # Every label is dropped to the unconditional class, so the labels no longer matter ...
  np.testing.assert_array_equal(np.asarray(train(params, (label + 1) % 5, jax.random.key(1))), a)
  # ... and the dropped paths follow the 'dropout' key.
  assert np.abs(np.asarray(train(params, label, jax.random.key(2))) - a).max() > 1e-3


def test_resolve_depth_rule():
  got = var_lib.resolve({'depth': 20, 'embed_dim': None, 'vocab_size': 64})
  assert (got['embed_dim'], got['num_heads'], got['vocab_size']) == (1280, 20, 64)
  assert got['drop_path_rate'] == pytest.approx(0.1 * 20 / 24)
  assert var_lib.resolve({'depth': 2, 'embed_dim': 96, 'num_heads': 3})['embed_dim'] == 96
  with pytest.raises(ValueError, match='unknown keys'):
    var_lib.resolve({'depth': 2, 'widht': 3})
  with pytest.raises(ValueError, match='divisible'):
    var_lib.resolve({'depth': 2, 'embed_dim': 100, 'num_heads': 3})
  with pytest.raises(ValueError, match='remat_policy'):
    var_lib.resolve({'depth': 2, 'remat_policy': 'some'})


@pytest.mark.parametrize('key, value', [('depth', 0), ('depth', -2), ('embed_dim', 0), ('num_heads', 0),
                                        ('vocab_size', 0), ('mlp_ratio', float('nan')),
                                        ('drop_path_rate', float('inf')), ('cond_drop_rate', -0.1)])
def test_resolve_refuses_zero_negative_and_non_finite_sizes_naming_the_key(key, value):
  with pytest.raises(ValueError, match=rf'model\.{key}={value!r} must be'):
    var_lib.resolve({'depth': 2, key: value})


def test_bad_inputs(tiny):
  model, params, _ = tiny
  label, x = _inputs(model)
  with pytest.raises(ValueError, match=r'labels must be in \[0, 5\]'):
    model.apply({'params': params}, jnp.array([0, 6]), x)
  with pytest.raises(ValueError, match=r'\(B, 13, 8\)'):
    model.apply({'params': params}, label, x[:, :-1])


VARIANTS = {
    'official': {},
    'shared_aln': {'shared_aln': True},
    'no_l2_norm': {'attn_l2_norm': False},
}


@pytest.fixture(scope='module', params=sorted(VARIANTS))
def variant(request, tiny):
  if not VARIANTS[request.param]:
    return tiny
  model = VAR(**TINY, **VARIANTS[request.param])
  return model, _random_params(model, seed=5), _forward(model)


def test_kv_cache_decoding_matches_teacher_forcing(variant):
  model, params, forward = variant
  label, x = _inputs(model)
  bounds = var_lib.scale_bounds(model.patch_nums)

  @jax.jit
  def decode(p, label, x):
    h, cond = model.apply({'params': p}, label, method=VAR.first_tokens)
    shape = model.kv_cache_shape(label.shape[0])
    kv = (jnp.zeros(shape), jnp.zeros(shape))
    logits = []
    for k, (begin, end) in enumerate(bounds):
      if k:
        h = model.apply({'params': p}, k, x[:, begin - model.first_l:end - model.first_l],
                        method=VAR.embed_scale)
      out, kv = model.apply({'params': p}, k, h, cond, kv, method=VAR.decode_scale)
      logits.append(out)
    return jnp.concatenate(logits, axis=1)

  want = np.asarray(forward(params, label, x))
  got = np.asarray(decode(params, label, x))
  assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())


def test_attention_functions_agree(tiny):
  model, params, forward = tiny
  label, x = _inputs(model)
  fused = _forward(VAR(**TINY, attention='dot_product'))
  np.testing.assert_allclose(np.asarray(fused(params, label, x)), np.asarray(forward(params, label, x)),
                             atol=1e-5)
