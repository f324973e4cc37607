"""The next-token (raster) baseline: causal mask, cached decoding, the sampler, FLOPs, and training."""
import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from var_jax import flops
from var_jax.models import next_token as next_token_lib
from var_jax.models import next_token_sampling
from var_jax.models import tokenizer as tokenizer_lib
from var_jax.weights import vqvae

# depth 2, C=32, 2 heads, a 3x3 map (9 tokens), 16 codes, 4 classes.
TINY = dict(depth=2, embed_dim=32, num_heads=2, vocab_size=16, patch_nums=(3,), num_classes=4)
TOK = dict(vocab_size=16, z_channels=8, ch=8, ch_mult=(1, 2), num_res_blocks=1, norm_groups=4,
           patch_nums=(3,))


@pytest.fixture(scope='module')
def model_and_params():
  model = next_token_lib.NextToken(**next_token_lib.resolve(TINY))
  L = model.seq_len
  init = jax.jit(lambda key: nn.unbox(model.init(key, jnp.zeros((1,), jnp.int32), jnp.zeros((1, L), jnp.int32))))
  params = init(jax.random.key(0))['params']
  # AdaLN gammas of 0.5 rather than the 1e-5 init, so that the blocks' outputs (and any leak) are visible.
  params['blocks']['ada_lin']['bias'] = params['blocks']['ada_lin']['bias'] + 0.5
  return model, params


@pytest.fixture(scope='module')
def idx_and_labels():
  rng = np.random.default_rng(0)
  return jnp.asarray(rng.integers(0, 16, (2, 9)), jnp.int32), jnp.asarray([1, 3], jnp.int32)


@pytest.fixture(scope='module')
def teacher_logits(model_and_params, idx_and_labels):
  model, params = model_and_params
  forward = jax.jit(lambda p, label, idx: model.apply({'params': p}, label, idx))
  idx, labels = idx_and_labels
  return forward, forward(params, labels, idx)


def test_no_position_sees_a_later_token(model_and_params, idx_and_labels, teacher_logits):
  _, params = model_and_params
  forward, base = teacher_logits
  idx, labels = idx_and_labels
  L = idx.shape[1]
  for j in range(L):
    changed = forward(params, labels, idx.at[:, j].set((idx[:, j] + 1) % 16))
    # Position i sees tokens < i: changing token j leaves positions <= j as they were ...
    np.testing.assert_array_equal(np.asarray(changed[:, :j + 1]), np.asarray(base[:, :j + 1]))
    # ... and reaches every later one.
    diff = np.abs(np.asarray(changed[:, j + 1:] - base[:, j + 1:])).max(axis=(0, 2))
    assert (diff > 1e-6).all(), (j, diff)


def test_the_dense_mask_and_the_default_path_agree(model_and_params, idx_and_labels, teacher_logits):
  model, params = model_and_params
  idx, labels = idx_and_labels
  dense = model.clone(attention='xla').apply({'params': params}, labels, idx)
  np.testing.assert_allclose(np.asarray(dense), np.asarray(teacher_logits[1]), atol=1e-5, rtol=1e-5)


def test_kv_cache_decoding_equals_teacher_forcing(model_and_params, idx_and_labels, teacher_logits):
  model, params = model_and_params
  idx, labels = idx_and_labels
  B, L = idx.shape
  NT = next_token_lib.NextToken
  x, cond = model.apply({'params': params}, labels, method=NT.first_token)
  kv = tuple(jnp.zeros(model.kv_cache_shape(B)) for _ in range(2))
  decode = jax.jit(lambda p, i, x, cond, kv: model.apply({'params': p}, i, x, cond, kv,
                                                         method=NT.decode_token))
  embed = jax.jit(lambda p, i, tok: model.apply({'params': p}, i, tok, method=NT.embed_token))
  for i in range(L):
    logits, kv = decode(params, jnp.int32(i), x, cond, kv)  # a traced position, as in the sampler
    np.testing.assert_allclose(np.asarray(logits[:, 0]), np.asarray(teacher_logits[1][:, i]),
                               atol=1e-5, rtol=1e-5, err_msg=f'position {i}')
    if i + 1 < L:
      x = embed(params, jnp.int32(i + 1), idx[:, i])


@pytest.fixture(scope='module')
def sampler_setup(model_and_params):
  model, params = model_and_params
  vae = tokenizer_lib.VQVAE(**vqvae.attributes(TOK))
  return next_token_sampling.Sampler(model, vae), params, vqvae.random_params(vae, 0)


def test_greedy_cfg0_sampling_is_the_conditional_argmax_and_compiles_once(sampler_setup, teacher_logits,
                                                                          caplog):
  sampler, params, vae_params = sampler_setup
  forward = teacher_logits[0]
  labels = np.array([0, 2, 3], np.int32)
  [idx], img = sampler(params, vae_params, labels, jax.random.key(0), cfg=0.0, top_k=1)
  assert idx.shape == (3, 9) and img.shape == (3, 6, 6, 3)
  assert 0 <= float(img.min()) and float(img.max()) <= 1
  # cfg = 0 is the conditional model: each greedy token is the argmax of teacher forcing on the prefix.
  want = np.asarray(forward(params, jnp.asarray(labels), idx).argmax(-1))
  np.testing.assert_array_equal(np.asarray(idx), want)
  caplog.set_level(logging.WARNING)
  with jax.log_compiles():
    [idx2], img2 = sampler(params, vae_params, labels[::-1].copy(), jax.random.key(1), cfg=2.0, top_k=5,
                           top_p=0.7, temperature=0.5)
    jax.block_until_ready(img2)
    again = [r.getMessage() for r in caplog.records if 'Compiling' in r.getMessage()]
    jax.jit(lambda x: x * 3)(jnp.ones(2))  # proves the log is captured
  assert not again, again
  assert any('Compiling' in r.getMessage() for r in caplog.records)
  assert not np.array_equal(np.asarray(idx2), np.asarray(idx)[::-1])  # the knobs reach the tokens


@pytest.mark.parametrize('kwargs,field', [
    (dict(temperature=0.0), 'temperature'), (dict(more_smooth=True), 'more_smooth'), (dict(cfg=-1), 'cfg')])
def test_bad_sampler_knobs_name_the_knob(sampler_setup, kwargs, field):
  sampler, params, vae_params = sampler_setup
  with pytest.raises(ValueError, match=field):
    sampler(params, vae_params, np.array([0]), jax.random.key(0), **kwargs)


def _abstract(**overrides):
  kw = next_token_lib.resolve(dict(overrides, scan_layers=False, attention='xla'))
  model = next_token_lib.NextToken(**kw)
  args = (jax.ShapeDtypeStruct((1,), jnp.int32), jax.ShapeDtypeStruct((1, model.seq_len), jnp.int32))
  params = nn.unbox(jax.eval_shape(lambda *a: model.init(jax.random.key(0), *a), *args)['params'])
  return kw, model, params, args


def test_param_counts_match_the_model_and_a_count_by_hand():
  kw, _, params, _ = _abstract(**TINY)
  assert flops.param_counts(kw, order='raster')['total'] == flops.count_params(params)
  # By hand: embeddings 16*32 + 5*32 + 32 + 9*32; block 32*192+192 + 3*1024+64 + 2 + 1024+32
  # + 32*128+128 + 128*32+32 = 18882; head_nm 32*64+64; head 32*16+16.
  assert flops.param_counts(kw, order='raster') == dict(total=992 + 2 * 18882 + 2112 + 528,
                                                        nonembed=2 * 18882 + 2112 + 528)


def test_train_flops_match_the_jaxpr_and_xla():
  """Depth 2 at the width rule (C=128), a 4x4 map, 64 codes. Measured: XLA / analytic (dense) 1.042
  (XLA adds the norms, softmax and GELU); at C=32 those make it 1.25, hence the width here."""
  from var_jax.models import loss as loss_lib
  kw, model, params, args = _abstract(depth=2, vocab_size=64, patch_nums=(4,), num_classes=4)
  L = model.seq_len

  def loss_and_grad(p, label_B, idx_BL):
    loss = lambda p: loss_lib.var_loss(model.apply({'params': p}, label_B, idx_BL), idx_BL, kw['patch_nums'])[0]
    return jax.value_and_grad(loss)(p)

  dense = flops.train_flops_per_image(kw, attention='xla', order='raster')
  assert flops.matmul_flops(loss_and_grad, params, *args) == dense  # every matmul, forward and backward
  cost = jax.jit(loss_and_grad).lower(params, *args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  assert abs(cost['flops'] / dense - 1) < 0.10, (cost['flops'], dense)
  # The causal mask keeps L(L+1)/2 of the L² pairs.
  per_pair = 3 * 2 * 2 * 2 * 128  # train x (QK, AV) x 2 FLOPs x depth x C
  assert dense - flops.train_flops_per_image(kw, order='raster') == per_pair * (L * L - L * (L + 1) // 2)


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match='patch_nums'):
    next_token_lib.resolve(dict(TINY, patch_nums=(1, 2)))
  with pytest.raises(ValueError, match='cvae'):
    next_token_lib.resolve(dict(TINY, cvae=8))


def test_three_steps_train_checkpoint_and_resume_through_the_engine(tmp_path):
  import shutil
  from conftest import load_experiment
  from var_jax.train import loop
  devices, run = jax.devices()[:1], tmp_path / 'run'

  def train_losses():
    return [r['loss'] for r in map(json.loads, (run / 'metrics.jsonl').read_text().splitlines())
            if r['split'] == 'train']

  done = loop.train(load_experiment('orderings_shapes', 'test'), str(run), devices=devices)
  assert done['task'] == 'next_token' and done['step'] == 3
  straight = train_losses()
  assert len(straight) == 3 and all(np.isfinite(straight))
  shutil.rmtree(run / 'checkpoints' / '3')  # as if the job died after saving step 2
  (run / 'DONE').unlink()
  resumed = loop.train(load_experiment('orderings_shapes', 'test'), str(run), devices=devices)
  assert resumed['step'] == 3
  assert train_losses() == straight  # step 3 redone from the step-2 checkpoint, bit for bit
