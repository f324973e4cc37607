"""CFG sampling: official greedy generation (fixture A), compile-once steps, filtering, errors."""
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from var_jax import errors
from var_jax.models import next_token
from var_jax.models import next_token_sampling
from var_jax.models import sampling
from var_jax.models import tokenizer
from var_jax.models.var import VAR
from var_jax.weights import var as var_weights


@pytest.fixture(scope='module')
def models(fixture_a, fixture_a_data):
  """(var, var params, vae, vae params, expected) for fixture A."""
  state = dict(np.load(fixture_a / 'var_state.npz'))
  var = VAR(**var_weights.config_from_state_dict(state))
  vae, vae_params = fixture_a_data.tokenizer()
  return (var, var_weights.from_state_dict(state, var), vae, vae_params, fixture_a_data.expected,
          fixture_a_data.config)


@pytest.fixture(scope='module')
def sampler(models):
  var, _, vae, *_ = models
  return sampling.make_sampler(var, vae)


@pytest.mark.parity
def test_greedy_guided_generation_matches_official(models, sampler):
  var, var_params, _, vae_params, e, cfg = models
  idx, img = sampler(var_params, vae_params, e['labels'], jax.random.key(0), cfg=cfg['cfg'], top_k=1)
  for k, idx_Bl in enumerate(idx):
    np.testing.assert_array_equal(np.asarray(idx_Bl), e[f'gen_idx_{k}'], err_msg=f'scale {k}')
  want = e['gen_img'].transpose(0, 2, 3, 1)
  assert img.shape == want.shape
  assert np.abs(np.asarray(img) - want).max() <= 1e-4


@pytest.mark.parity
def test_steps_compile_once(models, sampler, caplog):
  var, var_params, _, vae_params, e, _ = models
  sampler(var_params, vae_params, e['labels'], jax.random.key(0), top_k=1)  # compiled (maybe earlier)
  caplog.set_level(logging.WARNING)
  with jax.log_compiles():
    idx, img = sampler(var_params, vae_params, e['labels'][::-1].copy(), jax.random.key(1), cfg=2.0,
                       top_k=20, top_p=0.5)
    jax.block_until_ready(img)
    compiled_again = [r.getMessage() for r in caplog.records if 'Compiling' in r.getMessage()]
    jax.jit(lambda x: x * 3)(jnp.ones(2))  # proves the log is captured
  assert not compiled_again, compiled_again
  assert any('Compiling' in r.getMessage() for r in caplog.records)


def test_filter_top_k_top_p():
  logits = jnp.log(jnp.array([[[0.1, 0.4, 0.2, 0.3]]]))
  top2 = np.asarray(sampling.filter_top_k_top_p(logits, 2, 0.0))
  assert np.isfinite(np.asarray(sampling.filter_top_k_top_p(logits, 1, 0.0))).sum() == 1
  # top-k then top-p: of {0.4, 0.3} renormalised, 0.4/0.7 < 0.6 is not enough, both stay
  np.testing.assert_array_equal(np.isfinite(np.asarray(sampling.filter_top_k_top_p(logits, 2, 0.6))),
                                [[[False, True, False, True]]])
  np.testing.assert_array_equal(np.isfinite(top2), [[[False, True, False, True]]])
  # top_p 0.6: the smallest set with mass >= 0.6 is {0.4, 0.3}
  top_p = np.asarray(sampling.filter_top_k_top_p(logits, 0, 0.6))
  np.testing.assert_array_equal(np.isfinite(top_p), [[[False, True, False, True]]])
  # tiny top_p still keeps the most likely token; top_p 0 keeps all
  assert np.isfinite(np.asarray(sampling.filter_top_k_top_p(logits, 0, 1e-6))).sum() == 1
  assert np.isfinite(np.asarray(sampling.filter_top_k_top_p(logits, 0, 0.0))).all()


@pytest.mark.parity
def test_sampling_follows_seed_and_ranges(models, sampler):
  var, var_params, vae, vae_params, e, _ = models
  labels = np.array([1, 2, 10])  # 10 = num_classes: unconditional
  knobs = dict(cfg=1.0, top_k=50, top_p=0.9)
  a_idx, a_img = sampler(var_params, vae_params, labels, jax.random.key(3), **knobs)
  b_idx, _ = sampler(var_params, vae_params, labels, jax.random.key(3), **knobs)
  c_idx, _ = sampler(var_params, vae_params, labels, jax.random.key(4), **knobs)
  flat = lambda idx: np.concatenate([np.asarray(i) for i in idx], 1)
  np.testing.assert_array_equal(flat(a_idx), flat(b_idx))
  assert (flat(a_idx) != flat(c_idx)).any()
  assert [i.shape for i in a_idx] == [(3, p * p) for p in var.patch_nums]
  assert 0.0 <= float(a_img.min()) and float(a_img.max()) <= 1.0


@pytest.mark.parity
def test_bad_arguments(models, sampler):
  var, var_params, vae, vae_params, e, _ = models
  with pytest.raises(ValueError, match='cfg must be >= 0'):
    sampler(var_params, vae_params, e['labels'], jax.random.key(0), cfg=-0.5)
  with pytest.raises(ValueError, match=r'labels must be in \[0, 10\]'):
    sampler(var_params, vae_params, np.array([3, 11]), jax.random.key(0))
  with pytest.raises(ValueError, match='top_p'):
    sampler(var_params, vae_params, e['labels'], jax.random.key(0), top_p=1.0)
  with pytest.raises(ValueError, match='top_k'):
    sampler(var_params, vae_params, e['labels'], jax.random.key(0), top_k=var.vocab_size + 1)
  with pytest.raises(ValueError, match='patch_nums'):
    sampling.make_sampler(VAR(vocab_size=256, cvae=16, patch_nums=(1, 2, 4), num_classes=10), vae)


@pytest.mark.parity
def test_more_smooth_feeds_a_codebook_mixture(models, sampler):
  var, var_params, vae, vae_params, e, _ = models
  run = lambda smooth: sampler(var_params, vae_params, e['labels'], jax.random.key(5), cfg=1.5,
                               more_smooth=smooth)
  (hard_idx, hard_img), (soft_idx, soft_img) = run(False), run(True)
  np.testing.assert_array_equal(np.asarray(soft_idx[0]), np.asarray(hard_idx[0]))  # same draw ...
  assert np.abs(np.asarray(soft_img) - np.asarray(hard_img)).max() > 1e-3  # ... a mixture fed back
  assert 0.0 <= float(soft_img.min()) and float(soft_img.max()) <= 1.0


def test_a_tokenizer_that_does_not_fit_is_refused_naming_both_values():
  vae = tokenizer.VQVAE(vocab_size=16, z_channels=4, ch=8, ch_mult=(1, 1), num_res_blocks=1, norm_groups=4,
                        share_quant_resi=2, patch_nums=(1, 2))
  var = VAR(vocab_size=32, cvae=4, patch_nums=(1, 2), num_classes=3, depth=1, embed_dim=32, num_heads=2)
  with pytest.raises(errors.WeightsError, match=r'VAR \(patch_nums, vocab_size, cvae\)=\(\(1, 2\), 32, 4\) but '
                     r'tokenizer \(patch_nums, vocab_size, z_channels\)=\(\(1, 2\), 16, 4\)'):
    sampling.make_sampler(var, vae)
  raster = next_token.NextToken(vocab_size=16, patch_nums=(4,), num_classes=3, depth=1, embed_dim=32, num_heads=2)
  with pytest.raises(errors.WeightsError, match=r'NextToken \(patch_nums, vocab_size\)=\(\(4,\), 16\) but '
                     r'tokenizer \(patch_nums, vocab_size\)=\(\(1, 2\), 16\)'):
    next_token_sampling.Sampler(raster, vae)


@pytest.mark.parametrize('knobs, message', [
    (dict(cfg=float('nan')), r'cfg must be >= 0 and finite, got nan'),
    (dict(cfg=float('inf')), r'cfg must be >= 0 and finite'),
    (dict(top_k=-5), r'top_k must be in \[0, 16\]'),
    (dict(top_p=1.0), r'top_p must be in \[0, 1\)'),
    (dict(top_p=float('nan')), r'top_p must be in \[0, 1\)'),
    (dict(temperature=0.0), r'temperature must be > 0'),
])
def test_knobs_out_of_range_are_refused_naming_the_knob(knobs, message):
  with pytest.raises(ValueError, match=message):
    sampling.check_knobs(**dict(dict(cfg=1.5, top_k=0, top_p=0.0), **knobs), vocab_size=16)
