"""MaskGIT, the third ordering: mask schedule and loss, bidirectional model, iterative decoding, CFG, FLOPs."""
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from var_jax import flops
from var_jax.models import loss as loss_lib
from var_jax.models import maskgit as maskgit_lib
from var_jax.models import maskgit_sampling
from var_jax.generate import orderings
from var_jax.models import tokenizer as tokenizer_lib
from var_jax.weights import vqvae

# depth 2, C=32, 2 heads, a 4x4 map (16 tokens), 16 codes (+ MASK), 4 classes.
TINY = dict(depth=2, embed_dim=32, num_heads=2, vocab_size=16, patch_nums=(4,), num_classes=4)
TOK = dict(vocab_size=16, z_channels=8, ch=8, ch_mult=(1, 2), num_res_blocks=1, norm_groups=4, patch_nums=(4,))
L, V, MASK = 16, 16, 16


@pytest.fixture(scope='module')
def model_and_params():
  model = maskgit_lib.MaskGIT(**maskgit_lib.resolve(TINY))
  init = jax.jit(lambda key: nn.unbox(model.init(key, jnp.zeros((1,), jnp.int32), jnp.zeros((1, L), jnp.int32))))
  params = init(jax.random.key(0))['params']
  # AdaLN gammas of 0.5 rather than the 1e-5 init, so that the blocks' outputs are visible.
  params['blocks']['ada_lin']['bias'] = params['blocks']['ada_lin']['bias'] + 0.5
  return model, params


# ---- training: schedule, masks, loss ----------------------------------------------------------------


def test_the_cosine_schedule_sets_how_many_tokens_are_masked():
  np.testing.assert_allclose(maskgit_lib.mask_schedule(jnp.array([0.0, 0.5, 1.0])), [1.0, math.sqrt(0.5), 0.0],
                             atol=1e-6)
  ratios = jnp.array([0.0, 0.25, 0.5, 0.75, 0.999])
  want = [16, math.ceil(16 * math.cos(math.pi / 8)), math.ceil(16 * math.cos(math.pi / 4)),
          math.ceil(16 * math.cos(3 * math.pi / 8)), 1]  # 16, 15, 12, 7, at least 1
  counts = maskgit_lib.masked_count(ratios, L)
  np.testing.assert_array_equal(counts, want)
  mask = maskgit_lib.random_mask(jax.random.key(3), counts, L)
  np.testing.assert_array_equal(np.asarray(mask).sum(1), want)  # exactly that many, per row
  # Evaluation ratios are stratified: the batch spans the schedule.
  np.testing.assert_allclose(maskgit_lib.eval_ratios(4), [0.125, 0.375, 0.625, 0.875])


def test_the_loss_scores_the_masked_positions_only():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, L, V)).astype(np.float32)
  idx = rng.integers(0, V, (2, L))
  mask = rng.random((2, L)) < 0.4
  loss, metrics = loss_lib.masked_loss(jnp.asarray(logits), jnp.asarray(idx), jnp.asarray(mask))
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nll = -np.take_along_axis(logp, idx[..., None], -1)[..., 0]
  np.testing.assert_allclose(float(loss), nll[mask].mean(), rtol=1e-5)
  np.testing.assert_allclose(float(metrics['acc']), (logits.argmax(-1) == idx)[mask].mean(), rtol=1e-6)
  # Anything at an unmasked position, logits or target, leaves the loss as it was.
  logits2 = np.where(mask[..., None], logits, rng.normal(size=logits.shape) * 10).astype(np.float32)
  idx2 = np.where(mask, idx, (idx + 1) % V)
  loss2, _ = loss_lib.masked_loss(jnp.asarray(logits2), jnp.asarray(idx2), jnp.asarray(mask))
  assert float(loss2) == float(loss)


def test_training_inputs_hold_mask_exactly_where_the_loss_looks(model_and_params):
  from var_jax.train.tasks import maskgit as maskgit_task
  model, _ = model_and_params
  idx = jnp.asarray(np.random.default_rng(1).integers(0, V, (3, L)), jnp.int32)
  inputs, mask = maskgit_task.masked_inputs(model, idx, jnp.array([0.1, 0.5, 0.9]), jax.random.key(0))
  inputs, mask = np.asarray(inputs), np.asarray(mask)
  np.testing.assert_array_equal(inputs == MASK, mask)
  np.testing.assert_array_equal(inputs[~mask], np.asarray(idx)[~mask])


def test_every_position_sees_every_token(model_and_params):
  model, params = model_and_params
  forward = jax.jit(lambda idx: model.apply({'params': params}, jnp.array([1]), idx))
  idx = jnp.asarray(np.random.default_rng(2).integers(0, V, (1, L)), jnp.int32)
  base = forward(idx)
  for j in (0, L - 1):  # the first and the last token both reach every position: no causal mask
    diff = np.abs(np.asarray(forward(idx.at[0, j].set(MASK)) - base)).max(-1)[0]
    assert (diff > 1e-6).all(), (j, diff)


# ---- decoding ---------------------------------------------------------------------------------------


def _random_logits_fn(idx_BL):
  """Logits that depend on the input (so steps differ), without a network."""
  key = jax.random.fold_in(jax.random.key(7), jnp.sum(idx_BL))
  return 3.0 * jax.random.normal(key, idx_BL.shape + (V,))


def test_each_decoding_step_fixes_exactly_the_scheduled_tokens():
  T = 4
  want = [math.floor(L * math.cos(math.pi / 2 * (t + 1) / T)) for t in range(T)]  # 14, 11, 6, 0 still masked
  step = jax.jit(lambda t, idx, before, key: maskgit_sampling.decode_step(
      _random_logits_fn, t, T, idx, before, key, mask_id=MASK, top_k=0, top_p=0.0, noise=4.5))
  idx, before = jnp.full((3, L), MASK, jnp.int32), L
  for t in range(T):
    new, count = step(jnp.int32(t), idx, jnp.int32(before), jax.random.split(jax.random.key(t), 3))
    new = np.asarray(new)
    assert int(count) == want[t]
    np.testing.assert_array_equal((new == MASK).sum(1), [want[t]] * 3)
    fixed = np.asarray(idx) != MASK
    np.testing.assert_array_equal(new[fixed], np.asarray(idx)[fixed])  # fixed tokens stay
    idx, before = jnp.asarray(new), int(count)
  assert (np.asarray(idx) < V).all()


@pytest.mark.parametrize('knobs', [dict(noise=4.5), dict(noise=0.0, top_k=3, top_p=0.9)])
def test_decoding_a_model_that_predicts_a_fixed_map_returns_that_map(knobs):
  target = jnp.asarray(np.random.default_rng(4).integers(0, V, (2, L)), jnp.int32)
  fixed_fn = lambda idx_BL: 20.0 * jax.nn.one_hot(target, V)  # whatever the input
  for rng in (jax.random.key(0), jax.random.split(jax.random.key(1), 2)):  # one key, one key per row
    out = jax.jit(lambda r: maskgit_sampling.decode(fixed_fn, 2, L, r, mask_id=MASK, steps=8, **knobs))(rng)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(target))


@pytest.fixture(scope='module')
def sampler_setup(model_and_params):
  model, params = model_and_params
  vae = tokenizer_lib.VQVAE(**vqvae.attributes(TOK))
  sampler = orderings.of_model(model).make_sampler(model, vae)  # the dispatcher every command uses
  assert isinstance(sampler, maskgit_sampling.Sampler)
  return sampler, params, vqvae.random_params(vae, 0)


def test_cfg0_is_the_conditional_path_and_the_sampler_compiles_once(sampler_setup, model_and_params, caplog):
  sampler, params, vae_params = sampler_setup
  model, _ = model_and_params
  labels = np.array([0, 2, 3], np.int32)
  keys = jax.random.split(jax.random.key(5), 3)
  [idx], img = sampler(params, vae_params, labels, keys, cfg=0.0, temperature=0.7, steps=4)
  assert idx.shape == (3, L) and img.shape == (3, 8, 8, 3)
  assert 0 <= float(img.min()) and float(img.max()) <= 1
  # The conditional rows alone, no unconditional batch, through the same decoding.
  cond_fn = lambda idx_BL: model.apply({'params': params}, jnp.asarray(labels), idx_BL) / 0.7
  want = jax.jit(lambda r: maskgit_sampling.decode(cond_fn, 3, L, r, mask_id=MASK, steps=4))(keys)
  np.testing.assert_array_equal(np.asarray(idx), np.asarray(want))
  caplog.set_level(logging.WARNING)
  with jax.log_compiles():
    [idx2], img2 = sampler(params, vae_params, labels[::-1].copy(), keys, cfg=3.0, top_k=5, top_p=0.8,
                           temperature=1.3, steps=6, noise=1.0)
    jax.block_until_ready(img2)
    again = [r.getMessage() for r in caplog.records if 'Compiling' in r.getMessage()]
    jax.jit(lambda x: x * 3)(jnp.ones(2))  # proves the log is captured
  assert not again, again
  assert any('Compiling' in r.getMessage() for r in caplog.records)
  assert not np.array_equal(np.asarray(idx2), np.asarray(idx)[::-1])  # the knobs reach the tokens


@pytest.mark.parametrize('kwargs,field', [(dict(steps=0), 'steps'), (dict(noise=-1.0), 'noise'),
                                          (dict(more_smooth=True), 'more_smooth'), (dict(top_p=1.0), 'top_p')])
def test_bad_knobs_name_the_knob(sampler_setup, kwargs, field):
  sampler, params, vae_params = sampler_setup
  with pytest.raises(ValueError, match=field):
    sampler(params, vae_params, np.array([0]), jax.random.key(0), **kwargs)


# ---- accounting -------------------------------------------------------------------------------------


def _abstract(**overrides):
  kw = maskgit_lib.resolve(dict(overrides, scan_layers=False, attention='xla'))
  model = maskgit_lib.MaskGIT(**kw)
  args = (jax.ShapeDtypeStruct((1,), jnp.int32), jax.ShapeDtypeStruct((1, model.seq_len), jnp.int32))
  params = nn.unbox(jax.eval_shape(lambda *a: model.init(jax.random.key(0), *a), *args)['params'])
  return kw, model, params, args


def test_param_counts_match_the_model_and_a_count_by_hand():
  kw, _, params, _ = _abstract(**TINY)
  assert flops.param_counts(kw, order='masked')['total'] == flops.count_params(params)
  # By hand: tok_embed 17*32 (16 codes + MASK), class_emb 5*32, pos 16*32; blocks and heads as the
  # next-token model's (tests/test_next_token.py): 2 * 18882 + 32*64+64 + 32*16+16.
  assert flops.param_counts(kw, order='masked') == dict(total=544 + 160 + 512 + 2 * 18882 + 2112 + 528,
                                                        nonembed=2 * 18882 + 2112 + 528)


def _xla_flops(fn, *args):
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  return (cost[0] if isinstance(cost, (list, tuple)) else cost)['flops']


def test_train_and_sample_flops_match_the_jaxpr_and_xla():
  """Depth 2 at the width rule (C=128), a 4x4 map, 64 codes; all L² pairs (no mask to skip)."""
  kw, model, params, args = _abstract(depth=2, vocab_size=64, patch_nums=(4,), num_classes=4)
  mask = jnp.asarray(np.arange(16) % 3 == 0)[None]

  def loss_and_grad(p, label_B, idx_BL):
    loss = lambda p: loss_lib.masked_loss(model.apply({'params': p}, label_B, idx_BL), idx_BL, mask)[0]
    return jax.value_and_grad(loss)(p)

  train = flops.train_flops_per_image(kw, order='masked')
  assert flops.train_flops_per_image(kw, attention='xla', order='masked') == train  # nothing masked
  assert flops.matmul_flops(loss_and_grad, params, *args) == train  # every matmul, forward and backward
  ratio = _xla_flops(loss_and_grad, params, *args) / train
  assert abs(ratio - 1) < 0.10, ratio
  # Sampling: T full passes over the map, each on the conditional and unconditional rows.
  one_pass = lambda p, label_B, idx_BL: maskgit_sampling.guided_logits_fn(model, p, label_B, 1.5, 1.0)(idx_BL)
  per_pass = flops.sample_flops_per_image(kw, 'masked', steps=1)
  assert flops.sample_flops_per_image(kw, 'masked') == 8 * per_pass == 8 * 2 * train / 3
  ratio = _xla_flops(one_pass, params, *args) / per_pass
  assert abs(ratio - 1) < 0.10, ratio


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match='patch_nums'):
    maskgit_lib.resolve(dict(TINY, patch_nums=(1, 2)))
  with pytest.raises(ValueError, match='cvae'):
    maskgit_lib.resolve(dict(TINY, cvae=8))
