"""Optimizer recipe against the official VAR trainer: schedules, no-decay set, AdamW numerics."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from var_jax.train import config as config_lib
from var_jax.train import state as state_lib


def _official_lr(sche, peak, cur_it, wp_it, max_it, wp0, wpe):
  """utils/lr_control.py `lr_wd_annealing` (learning-rate half), transcribed from the reference."""
  if cur_it < wp_it:
    cur = wp0 + (1 - wp0) * cur_it / wp_it
  else:
    pasd = (cur_it - wp_it) / (max_it - 1 - wp_it)
    rest = 1 - pasd
    if sche == 'cos':
      cur = wpe + (1 - wpe) * (0.5 + 0.5 * math.cos(math.pi * pasd))
    else:
      T = {'lin0': 0.05, 'lin': 0.15}[sche]
      cur = 1 if pasd < T else wpe + (1 - wpe) * rest / (1 - T)
  return cur * peak


def _optim(**kw):
  o = config_lib.base_config().optim
  o.update(kw)
  return o


@pytest.mark.parametrize('sche', ['lin0', 'lin', 'cos'])
def test_lr_schedule_matches_official(sche):
  steps, warmup, peak = 500, 10, 3e-4
  fn = state_lib.lr_schedule(_optim(lr=peak, warmup_steps=warmup, schedule=sche), steps)
  got = np.asarray(jax.vmap(fn)(jnp.arange(steps)))
  want = np.array([_official_lr(sche, peak, i, warmup, steps, 0.005, 0.01) for i in range(steps)])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=0)  # float32 schedule
  assert got[0] == pytest.approx(0.005 * peak)
  assert got[-1] == pytest.approx(0.01 * peak)


@pytest.mark.parametrize('sche', ['lin0', 'lin', 'lin00', 'cos'])
def test_schedules_hold_their_end_values_past_the_last_step(sche):
  steps, peak = 60, 1e-3
  optim = _optim(lr=peak, warmup_steps=1, schedule=sche, weight_decay=0.05, weight_decay_end=0.2)
  lr = np.asarray(jax.vmap(state_lib.lr_schedule(optim, steps))(jnp.arange(steps - 1, 3 * steps)))
  wd = np.asarray(jax.vmap(state_lib.wd_schedule(optim, steps))(jnp.arange(steps - 1, 3 * steps)))
  np.testing.assert_allclose(lr, 0.01 * peak, rtol=1e-5)
  np.testing.assert_allclose(wd, 0.2, rtol=1e-5)


def test_resolved_defaults_follow_the_official_recipe():
  c = config_lib.base_config()
  c.data.name = 'synthetic_tokens'
  c.model.update(dict(depth=2, vocab_size=16, cvae=4, patch_nums=(1, 2), num_classes=3))
  c.tokenizer.update(dict(vocab_size=16, z_channels=4, patch_nums=(1, 2)))
  c.steps, c.batch_size = 1000, 768
  r = config_lib.resolve(c, num_devices=8)
  assert r.optim.lr == pytest.approx(1e-4 * 768 / 256)  # base lr 1e-4 x batch / 256
  assert r.optim.warmup_steps == 20  # official wp = ep / 50
  assert (r.optim.b1, r.optim.b2, r.optim.grad_clip, r.optim.weight_decay) == (0.9, 0.95, 2.0, 0.05)
  assert r.optim.weight_decay_end == 0.05  # official twde = twde or twd
  assert r.optim.schedule == 'lin0'
  assert (r.model.embed_dim, r.model.num_heads) == (128, 2)


def test_weight_decay_cosine_ramp():
  fn = state_lib.wd_schedule(_optim(weight_decay=0.05, weight_decay_end=0.2), steps=101)
  assert float(fn(0)) == pytest.approx(0.05)
  assert float(fn(50)) == pytest.approx(0.125)
  assert float(fn(100)) == pytest.approx(0.2)


def test_no_decay_set_on_var_params():
  from var_jax.models import var
  import flax.linen as nn
  model = var.VAR(**var.resolve(dict(depth=2, embed_dim=32, num_heads=2, vocab_size=16, cvae=4,
                                     patch_nums=(1, 2), num_classes=3, shared_aln=False)))
  boxed = jax.eval_shape(lambda k: model.init({'params': k, 'dropout': k}, jnp.zeros((1,), jnp.int32),
                                              jnp.zeros((1, 4, 4)))['params'], jax.random.key(0))
  specs, params = nn.get_partition_spec(boxed), nn.meta.unbox(boxed)
  flat = {jax.tree_util.keystr(p): m for p, m in
          jax.tree_util.tree_leaves_with_path(state_lib.decay_mask(params, specs))}
  decayed = sorted(k for k, m in flat.items() if m)
  not_decayed = sorted(k for k, m in flat.items() if not m)
  assert all(k.endswith("['kernel']") or k == "['class_emb']" for k in decayed), decayed
  assert "['class_emb']" in decayed and "['head']['kernel']" in decayed
  for name in ('pos_start', 'pos_embed', 'lvl_embed', 'scale_mul', 'q_bias', 'v_bias'):
    assert any(name in k for k in not_decayed), name
  assert not any('kernel' in k for k in not_decayed)
  # The scanned blocks stack a 'layers' axis: their per-layer vectors still count as 1-D.
  assert any("['blocks']" in k and 'scale_mul' in k for k in not_decayed)


def test_adamw_matches_torch_with_clipping_and_no_decay_group():
  torch = pytest.importorskip('torch')
  rng = np.random.default_rng(0)
  params = {'w': {'kernel': rng.normal(size=(4, 3)).astype(np.float32)},
            'b': {'bias': rng.normal(size=(3,)).astype(np.float32)},
            'pos_start': rng.normal(size=(2, 3)).astype(np.float32)}
  grads = [jax.tree.map(lambda p: (10 * rng.normal(size=p.shape)).astype(np.float32), params)
           for _ in range(3)]
  steps, peak = 50, 1e-2  # no warmup: lin0 holds the peak for the first steps
  o = _optim(lr=peak, warmup_steps=0, weight_decay=0.05, weight_decay_end=0.05)
  tx = state_lib.make_optimizer(o, steps)
  p, s = jax.tree.map(jnp.asarray, params), tx.init(params)
  update = jax.jit(tx.update)
  for g in grads:
    u, s = update(g, s, p)
    p = optax.apply_updates(p, u)

  tw = torch.nn.Parameter(torch.tensor(params['w']['kernel']))
  tb = torch.nn.Parameter(torch.tensor(params['b']['bias']))
  tp = torch.nn.Parameter(torch.tensor(params['pos_start']))
  opt = torch.optim.AdamW([{'params': [tw], 'weight_decay': 0.05},
                           {'params': [tb, tp], 'weight_decay': 0.0}], lr=peak, betas=(0.9, 0.95))
  for g in grads:
    tw.grad, tb.grad, tp.grad = (torch.tensor(np.asarray(x)) for x in
                                 (g['w']['kernel'], g['b']['bias'], g['pos_start']))
    norm = torch.nn.utils.clip_grad_norm_([tw, tb, tp], 2.0)
    assert float(norm) > 2.0  # clipping is active
    opt.step()
  np.testing.assert_allclose(p['w']['kernel'], tw.detach().numpy(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(p['b']['bias'], tb.detach().numpy(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(p['pos_start'], tp.detach().numpy(), rtol=1e-5, atol=1e-6)
