"""Tokenizer training: losses fall, outputs stay finite, codebook health, restarts, export, config errors."""
import dataclasses
import functools
import json
import os
import signal
import subprocess
import sys
import time

from conftest import load_experiment
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from var_jax.data import sources
from var_jax.data import synthetic_shapes
from var_jax.models import discriminator
from var_jax.models import quantizer
from var_jax.train import codebook
from var_jax.train import config as config_lib
from var_jax.train import engine as engine_lib
from var_jax.train.tasks import tokenizer_loss
from var_jax.weights import state_dict as sd
from var_jax.weights import vqvae

SIZE = 16
STEPS = 8


def tiny_config(**overrides):
  c = config_lib.base_config('tokenizer')
  c.steps = 50
  c.batch_size = 8
  c.tokenizer.update(dict(vocab_size=32, z_channels=8, ch=8, ch_mult=(1, 2), num_res_blocks=1,
                          norm_groups=4, patch_nums=(1, 2, 4, 8)))
  c.data.image_size = SIZE
  c.optim.update(dict(lr=3e-3, warmup_steps=0))
  # Everything optional is on, so one compiled step covers every branch: the discriminator joins
  # at step 2 with the adaptive weight, the codebook follows EMA k-means, dead codes restart.
  c.disc.update(dict(weight=0.5, start_step=2, ch=8, n_layers=2, norm_groups=4))
  c.codebook.update(dict(window=2, restart_every=2, ema_decay=0.9))
  for key, value in overrides.items():
    c[key] = value
  return c


def shapes_batch(n, seed=0):
  rng = np.random.default_rng(seed)
  imgs = np.stack([synthetic_shapes.draw_example(rng, SIZE)[0] for _ in range(n)])
  return imgs.astype(np.float32) / 127.5 - 1.0


@pytest.fixture(scope='module')
def trained():
  """A tiny engine trained STEPS steps on one fixed batch: (engine, state, metrics per step)."""
  devices = jax.devices()[:2]  # data-parallel over 2 of the fake devices; compiles faster than 8
  cfg = config_lib.resolve(tiny_config(), len(devices))
  engine = engine_lib.Engine(cfg, devices)
  state = engine.init_state()
  batch = engine.global_batch({'image': shapes_batch(cfg.batch_size)})
  history = []
  for _ in range(STEPS):
    state, metrics = engine.train_step(state, batch)
    history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
  return engine, state, history


def test_few_steps_reduce_the_loss_and_stay_finite(trained):
  engine, state, history = trained
  assert engine.mesh.shape['data'] == 2  # the batch really is split over two devices
  for step, metrics in enumerate(history):
    bad = {k: v for k, v in metrics.items() if not np.isfinite(v)}
    assert not bad, f'non-finite metrics at step {step}: {bad}'
  leaves = jax.tree.leaves(jax.device_get((state.params, state.opt_state)))
  assert all(np.all(np.isfinite(np.asarray(x))) for x in leaves)
  assert history[-1]['rec_loss'] < 0.8 * history[0]['rec_loss']
  assert history[-1]['psnr'] > history[0]['psnr'] + 1.0
  # The GAN terms are off before disc.start_step and on after it.
  assert [h['disc_weight'] for h in history[:2]] == [0.0, 0.0]
  assert all(h['disc_weight'] > 0 for h in history[2:])
  assert int(jax.device_get(state.step)) == STEPS


def test_health_is_logged_per_scale(trained):
  _, _, history = trained
  last = history[-1]
  for k in range(4):
    assert 0 < last[f'usage_scale_{k}'] <= 100
    assert 1 <= last[f'perplexity_scale_{k}'] <= 32
  # One token per image at scale 0: at most 8 of 32 codes per step, 2-step window.
  assert last['usage_scale_0'] <= 100 * 16 / 32
  assert sum(h['codes_restarted'] for h in history) > 0


def test_usage_window_and_perplexity_by_hand():
  health = codebook.init_health(2, 4)
  hits = [([0], [0, 1]), ([0], [2]), ([0], [2]), ([0], [2])]
  for step, (s0, s1) in enumerate(hits):
    idx = [jnp.asarray([s0], jnp.int32), jnp.asarray([s1], jnp.int32)]
    health = codebook.update_health(health, codebook.hit_counts(idx, 4), jnp.asarray(step), 3)
  m = codebook.health_metrics(health, jnp.asarray(3), window=3)
  # Steps 1..3 are in the window: scale 0 used code 0, scale 1 only code 2 (0, 1 fell out).
  assert float(m['usage_scale_0']) == 25.0 and float(m['usage_scale_1']) == 25.0
  assert float(m['usage']) == 50.0
  np.testing.assert_allclose(float(m['perplexity_scale_0']), 1.0, rtol=1e-6)
  uniform = codebook.update_health(codebook.init_health(1, 4), jnp.ones((1, 4)), jnp.asarray(0), 5)
  np.testing.assert_allclose(
      float(codebook.health_metrics(uniform, jnp.asarray(0), 5)['perplexity_scale_0']), 4.0,
      rtol=1e-6)
  assert np.asarray(codebook.dead_codes(health, jnp.asarray(3), 3)).tolist() == [
      False, True, False, True]


def test_dead_code_restart_revives_unused_codes():
  rng = np.random.default_rng(0)
  live = rng.normal(0, 1, (4, 2)).astype(np.float32)
  codebook_VC = jnp.asarray(np.concatenate([live, np.full((4, 2), 100.0, np.float32)]))
  rest_list = [jnp.asarray(rng.normal(0, 1, (n, 2)), jnp.float32) for n in (2, 8, 32)]
  health = codebook.init_health(3, 8)
  for step in range(3):
    idx = [quantizer.nearest_code(r, codebook_VC, False)[None] for r in rest_list]
    health = codebook.update_health(health, codebook.hit_counts(idx, 8), jnp.asarray(step), 3)
  dead = codebook.dead_codes(health, jnp.asarray(2), 3)
  assert np.asarray(dead[4:]).all(), 'the far-away codes were never chosen'
  new = codebook.restart_codes(codebook_VC, dead, rest_list, jax.random.key(0))
  np.testing.assert_array_equal(np.asarray(new)[~np.asarray(dead)],
                                np.asarray(codebook_VC)[~np.asarray(dead)])
  pool = np.concatenate([np.asarray(r) for r in rest_list])
  for v in np.flatnonzero(np.asarray(dead)):
    assert np.any(np.all(pool == np.asarray(new)[v], axis=1)), f'code {v} is not a quantizer input'
  idx_after = np.concatenate([np.asarray(quantizer.nearest_code(r, new, False)) for r in rest_list])
  revived = set(idx_after.tolist()) & set(range(4, 8))
  assert revived, 'no restarted code is chosen afterwards'


def test_ema_update_moves_codes_to_their_cluster_means():
  codebook_VC = jnp.asarray([[0.0, 0.0], [10.0, 10.0]])
  ema = codebook.init_ema(codebook_VC)
  rest = [jnp.asarray([[1.0, 1.0], [3.0, 3.0]])]
  idx = [jnp.asarray([[0, 0]], jnp.int32)]
  update = jax.jit(functools.partial(codebook.ema_update, decay=0.9))
  for _ in range(200):  # the unused code's count decays below min_count: it must not move
    ema, codebook_VC = update(ema, codebook_VC, idx, rest)
  np.testing.assert_allclose(np.asarray(codebook_VC), [[2.0, 2.0], [10.0, 10.0]], atol=1e-4)


def test_discriminator_and_hinge_losses():
  d = discriminator.PatchDiscriminator(ch=8, n_layers=2, norm_groups=4)
  logits = jax.jit(lambda x: d.apply(d.init(jax.random.key(0), x), x))(jnp.zeros((2, 32, 32, 3)))
  assert logits.shape == (2, 6, 6, 1)  # 32 / 2**2 - 2: one logit per overlapping patch
  real, fake = jnp.asarray([2.0, 0.0]), jnp.asarray([-2.0, 0.0])
  assert float(discriminator.hinge_d_loss(real, fake)) == 0.5
  assert float(discriminator.hinge_g_loss(fake)) == 1.0
  np.testing.assert_allclose(
      float(discriminator.adaptive_weight(jnp.asarray([3.0, 4.0]), jnp.asarray([0.0, 0.5]))),
      5.0 / 0.5001, rtol=1e-6)


def test_eval_reports_every_scale_count(trained):
  engine, state, _ = trained
  batch = engine.global_batch({'image': shapes_batch(8, seed=1)})
  metrics = {k: float(v) for k, v in jax.device_get(engine.eval_step(state, batch)).items()}
  for k in range(1, 5):
    assert np.isfinite(metrics[f'psnr_scales_{k}']) and -1 <= metrics[f'ssim_scales_{k}'] <= 1
  # The headline psnr is that of the full pyramid's reconstruction, computed here in float64 numpy.
  images = np.asarray(batch['image'], np.float64)
  recon_K = np.asarray(tokenizer_loss.reconstructions(engine.task.vae, state.params['vae'], batch['image']))
  for k in range(1, 5):  # psnr_scales_k is the PSNR of the image decoded from the first k scales
    mse = np.mean((np.clip(recon_K[k - 1], -1, 1) - images) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(metrics[f'psnr_scales_{k}'], np.mean(10 * np.log10(4.0 / mse)), rtol=1e-4)
  np.testing.assert_allclose(metrics['psnr'], np.mean(10 * np.log10(4.0 / mse)), rtol=1e-4)  # all 4 scales


def test_export_round_trips_through_load_tokenizer(trained, tmp_path):
  from var_jax.weights import state_dict as sd
  engine, state, _ = trained
  path = engine.task.export(state, str(tmp_path / 'tok'))
  with open(os.path.join(path, 'config.json')) as f:
    assert json.load(f)['patch_nums'] == [1, 2, 4, 8]
  module, params = vqvae.load(path)
  assert module.vocab_size == 32 and tuple(module.ch_mult) == (1, 2)
  want = engine.task.host_vae_params(state)
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, params), want)
  assert sd.fingerprint(params) == sd.fingerprint(want)
  hits = np.load(os.path.join(path, 'vae_state.npz'))['quantize.ema_vocab_hit_SV']
  np.testing.assert_array_equal(
      hits, np.asarray(jax.device_get(state.opt_state['codebook']['health']['hits_SV'])))


@pytest.mark.parametrize('overrides, message', [
    ({'loss': {'perceptual': 1.0}}, 'needs loss.perceptual_path'),
    ({'mesh': {'data': 4, 'fsdp': 1, 'tensor': 2}}, 'mesh.tensor=2'),
    ({'data': {'image_size': 32}}, 'data.image_size=32'),
    ({'codebook': {'ema_decay': 1.5}}, 'codebook.ema_decay'),
    ({'disc': {'weight': 1.0, 'ch': 6}}, 'disc.ch=6'),
    ({'model': {'depth': 2}}, "unknown key 'model.depth'"),
])
def test_bad_config_is_one_clear_error(overrides, message):
  c = tiny_config()
  for group, values in overrides.items():
    if group in c:
      c[group].update(values)
    else:
      c[group] = values
  with pytest.raises(ValueError, match=message.replace('.', r'\.').replace('(', r'\(')):
    config_lib.resolve(c, 8)


# ---------------------------------------------------------------------------- the real CLI

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Long enough that the kill after step 4 lands mid-run even when steps take milliseconds.
CLI_STEPS = 12  # past the kill at step 4 and two codebook restarts after it (every 4 steps)


def _start(workdir, data_dir):
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=2')
  return subprocess.Popen(
      [sys.executable, '-m', 'var_jax.train', '--config=experiments/tokenizer_shapes.py:test',
       f'--workdir={workdir}', f'--config.steps={CLI_STEPS}', f'--config.data.data_dir={data_dir}'],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _records(workdir, split='train'):
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [r for r in map(json.loads, f) if r['split'] == split]


@pytest.mark.slow
def test_resume_after_kill_continues_exactly_and_exports(tmp_path):
  ref_dir, run_dir = str(tmp_path / 'reference'), str(tmp_path / 'interrupted')
  data_dir = str(tmp_path / 'data')
  data_cfg = load_experiment('tokenizer_shapes', 'test').data
  data_cfg.data_dir = data_dir
  sources.prepare(data_cfg)  # once, before two processes would race to build it
  reference = _start(ref_dir, data_dir)
  proc = _start(run_dir, data_dir)
  deadline = time.time() + 900
  # Killed once step 4 is logged and the step-3 checkpoint is complete (orbax renames it into place).
  while not (any(r['step'] >= 4 for r in _records(run_dir))
             and os.path.isdir(os.path.join(run_dir, 'checkpoints', '3'))):
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    assert time.time() < deadline, 'no step 4 logged'
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  proc = _start(run_dir, data_dir)
  errs = {}
  for name, p in (('resumed', proc), ('reference', reference)):
    _, errs[name] = p.communicate(timeout=900)
    assert p.returncode == 0, errs[name][-3000:]
  assert 'resumed from' in errs['resumed']  # the kill landed mid-run, so this really resumed
  want, got = _records(ref_dir), _records(run_dir)
  assert [r['step'] for r in got] == list(range(1, CLI_STEPS + 1))
  for key in ('loss', 'rec_loss', 'vq_loss', 'psnr', 'grad_norm', 'usage_scale_0', 'usage_scale_3',
              'perplexity_scale_3', 'codes_restarted'):
    assert [r[key] for r in got] == [r[key] for r in want], key  # bit for bit
  evals = _records(run_dir, 'eval')[-1]
  assert evals['psnr'] == _records(ref_dir, 'eval')[-1]['psnr']
  assert {f'psnr_scales_{k}' for k in range(1, 5)} <= set(evals)
  _, params = vqvae.load(os.path.join(run_dir, 'tokenizer'))
  _, ref_params = vqvae.load(os.path.join(ref_dir, 'tokenizer'))
  assert sd.fingerprint(params) == sd.fingerprint(ref_params)
  assert os.path.getsize(os.path.join(run_dir, 'recon_grid.png')) > 0


def test_perceptual_term_joins_the_reconstruction_loss(tmp_path):
  from var_jax.models import perceptual
  rng = np.random.default_rng(0)
  arrays = {k: rng.normal(0, 0.05, s).astype(np.float32)
            for k, s in perceptual.expected_shapes().items()}
  np.savez(tmp_path / 'vgg.npz', **arrays)
  params = perceptual.load_params(str(tmp_path / 'vgg.npz'))
  spec = tokenizer_loss.LossSpec.from_config(config_lib.resolve(tiny_config(), 8))
  spec = dataclasses.replace(spec, l1=1.0, l2=0.5, perceptual=2.0)
  img, recon = shapes_batch(2), shapes_batch(2, seed=3)
  fn = jax.jit(lambda a, b, p: tokenizer_loss.reconstruction_loss(a, b, spec, p))
  loss, terms = fn(img, recon, params)
  lpips = float(jnp.mean(jax.jit(perceptual.lpips)(params, img, recon)))
  np.testing.assert_allclose(float(terms['perceptual']), lpips, rtol=1e-5)
  want = np.mean(np.abs(recon - img)) + 0.5 * np.mean((recon - img) ** 2) + 2.0 * lpips
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
