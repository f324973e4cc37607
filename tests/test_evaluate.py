"""Evaluation-scale sampling and `python -m var_jax.evaluate`: per-index randomness (2 processes x 2 devices
give 1 device's images), resumption without recomputing chunks, metrics.json, two image folders, one-line errors.

The models are a random tiny VAR and tokenizer (4 px images) saved as a state dict and a tokenizer folder (and a
one-step training run of that VAR on that tokenizer, for the 2-process evaluation of a run folder); the feature
extractor is a tiny jitted function registered by a wrapper script around the real entry point.
"""
import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap
import types

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest
from scipy import linalg

from var_jax import errors
from var_jax.cli import evaluate
from var_jax.eval import features
from var_jax.eval import generate
from var_jax.eval import quality
from var_jax.generate import generator
from var_jax.models import sampling
from var_jax.models import tokenizer
from var_jax.models import var as var_lib
from var_jax.train import config as config_lib
from var_jax.train import loop
from var_jax.weights import state_dict as sd
from var_jax.weights import var as var_weights
from var_jax.weights import vqvae

REPO = pathlib.Path(__file__).resolve().parents[1]
KNOBS = dict(cfg=1.5, top_k=8, top_p=0.9, more_smooth=False)
N, CHUNK, CLASSES = 12, 4, 3


def tiny_features(variables, images_BHWC):
  """4 features (channel means, brightness spread) and 3 logits (the channel means)."""
  del variables
  x = images_BHWC.astype(jnp.float32) / 255
  means = x.mean(axis=(1, 2))
  return jnp.concatenate([means, x.mean(-1).std(axis=(1, 2))[:, None]], axis=1), means * 10


def tiny_extractor(arg='', batch_size=8):
  del arg
  return features.JitExtractor(tiny_features, {}, dim=4, num_classes=CLASSES, batch_size=batch_size)


# The real entry point with the tiny extractor registered as 'tiny'.
WRAPPER = textwrap.dedent('''
    import sys
    sys.path.insert(0, {tests!r})
    import test_evaluate
    from var_jax.eval import features
    features.EXTRACTORS['tiny'] = test_evaluate.tiny_extractor
    from var_jax.cli import evaluate
    evaluate.run()
''').format(tests=str(REPO / 'tests'))


def _random_params(shapes, seed):
  rng = np.random.default_rng(seed)
  leaf = lambda path, s: (np.ones(s.shape, np.float32) if jax.tree_util.keystr(path).endswith("['scale']")
                          else (rng.standard_normal(s.shape) * 0.3).astype(np.float32))
  return jax.tree_util.tree_map_with_path(leaf, shapes)


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _env(devices=1):
  return dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
              PYTHONPATH=str(REPO))


def _save_pngs(folder, images):
  folder.mkdir()
  for i, im in enumerate(images):
    PIL.Image.fromarray(im).save(folder / f'{i:03d}.png')


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  """Models (in memory and on disk), a reference folder and the wrapper script."""
  root = tmp_path_factory.mktemp('evaluate')
  vae = tokenizer.VQVAE(vocab_size=16, z_channels=4, ch=8, ch_mult=(1, 1), num_res_blocks=1, norm_groups=4,
                        share_quant_resi=2, patch_nums=(1, 2))
  var = var_lib.VAR(vocab_size=16, cvae=4, patch_nums=(1, 2), num_classes=CLASSES, depth=1, embed_dim=32,
                    num_heads=2)
  vae_params = _random_params(vqvae.param_shapes(vae), 0)
  var_params = _random_params(var_weights.param_shapes(var), 1)
  sd.write_state_dict(str(root / 'var.npz'), var_weights.to_state_dict(var_params, var))
  vqvae.save(str(root / 'tok'), vae, vae_params)
  ref_images = np.random.default_rng(0).integers(0, 256, (16, 4, 4, 3), dtype=np.uint8)
  _save_pngs(root / 'ref', ref_images)
  (root / 'wrapper.py').write_text(WRAPPER)
  model_flags = [f'--var={root / "var.npz"}', f'--tokenizer={root / "tok"}']
  return dict(root=root, models=(var, var_params, vae, vae_params), model_flags=model_flags, ref_images=ref_images)


def _one_step_run(run, tok):
  """A training run folder of the tiny VAR (one step, from scratch) on the saved tokenizer."""
  c = config_lib.base_config('var')
  c.model.update(dict(vocab_size=16, cvae=4, patch_nums=(1, 2), num_classes=CLASSES, depth=1, embed_dim=32,
                      num_heads=2))
  c.tokenizer.update(dict(path=str(tok), vocab_size=16, z_channels=4, patch_nums=(1, 2)))
  c.data.name = 'synthetic_tokens'
  c.update(dict(steps=1, batch_size=2))
  c.checkpoint.update(dict(every_steps=1, async_save=False))
  c.eval.batches = 1
  loop.train(c, str(run), jax.devices()[:1])
  return run


@pytest.fixture(scope='module')
def setup(saved):
  """`saved`, a data-parallel sampler, and the 2-process evaluation of the run folder started in the background."""
  root = saved['root']
  run = _one_step_run(root / 'run', root / 'tok')
  var, var_params, vae, vae_params = saved['models']
  multi = subprocess.Popen(
      ['bash', str(REPO / 'launch' / 'local.sh'), '--devices', '2', '--port', str(_free_port()), '2', '--',
       sys.executable, str(root / 'wrapper.py'), f'--workdir={run}', f'--num_samples={N}', '--per_class=2',
       f'--chunk_size={CHUNK}', '--batch_size=4', '--top_k=8', '--top_p=0.9', '--features=tiny',
       f'--reference={root / "ref"}', f'--out={root / "multi"}', f'--adm_npz={root / "multi" / "adm.npz"}',
       '--noprogress'],
      cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  sampler = sampling.make_sampler(var, vae)
  dp = generate.DataParallelSampler(sampler, var_params, vae_params, batch_size=2, devices=jax.devices()[:1])
  yield dict(saved, dp=dp, multi=multi, run=run)
  multi.kill()


def _plan(**kw):
  return generate.Plan(**dict(dict(num_samples=N, num_classes=CLASSES, per_class=2, chunk_size=CHUNK,
                                   knobs=KNOBS), **kw))


def _images(out_dir, plan):
  return np.concatenate([c['images'] for c in generate.iter_chunks(str(out_dir), plan)])


def test_draw_pads_the_last_batch_and_keys_each_sample_by_its_index():
  calls = []

  def fake_sampler(var_params, vae_params, labels, keys, **knobs):
    calls.append((np.asarray(labels), knobs))
    idx = [np.tile(np.asarray(labels)[:, None], (1, n)) for n in (1, 4)]
    u_B = np.asarray(jax.vmap(lambda key: jax.random.uniform(key, ()))(keys))  # each row from its own key
    return idx, u_B[:, None, None, None] * np.ones((len(labels), 2, 2, 3), np.float32)

  dp = generate.DataParallelSampler(fake_sampler, {}, {}, batch_size=2, devices=jax.devices()[:1])
  tokens, images = dp.draw([1, 1, 2, 2, 3], np.arange(5), seed=0, cfg=2.0)
  assert [len(c[0]) for c in calls] == [2, 2, 2]  # same shape every call: no recompilation
  np.testing.assert_array_equal(calls[-1][0], [3, 3])
  assert calls[0][1] == {'cfg': 2.0}
  np.testing.assert_array_equal(tokens[0][:, 0], [1, 1, 2, 2, 3])
  assert tokens[1].shape == (5, 4) and images.shape == (5, 2, 2, 3) and images.dtype == np.uint8
  alone = dp.draw([2], [3], seed=0)[1]  # sample 3's image depends on its index, not on its batch or row
  np.testing.assert_array_equal(alone[0], images[3])
  assert not np.array_equal(images[2], images[3])


def test_plan_labels_are_class_balanced_and_counts_must_divide():
  np.testing.assert_array_equal(_plan().labels(np.arange(N)), [0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2])
  assert [len(_plan().chunk_indices(c)) for c in range(_plan(chunk_size=5).num_chunks)] == [4, 4, 4]
  assert [len(_plan(chunk_size=5).chunk_indices(c)) for c in range(3)] == [5, 5, 2]
  with pytest.raises(errors.ConfigError, match='num_samples=10'):
    _plan(num_samples=10)


class _KillAfter:
  """Wraps a DataParallelSampler: counts the images sampled and raises once `limit` chunks are done."""

  def __init__(self, dp, limit=None):
    self.dp, self.limit, self.chunks = dp, limit, 0

  def sample(self, plan, indices):
    if self.limit is not None and self.chunks == self.limit:
      raise KeyboardInterrupt
    self.chunks += 1
    return self.dp.sample(plan, indices)


def test_killed_evaluation_resumes_without_recomputing_chunks(setup, tmp_path):
  plan = _plan()
  with pytest.raises(KeyboardInterrupt):
    generate.generate(_KillAfter(setup['dp'], limit=1), plan, str(tmp_path), progress=False)
  first = tmp_path / 'chunk_00000.npz'
  assert sorted(p.name for p in tmp_path.glob('chunk_*')) == ['chunk_00000.npz']
  stamp = first.stat().st_mtime_ns
  (tmp_path / 'chunk_00002.npz').write_bytes(b'cut short by a kill')
  again = _KillAfter(setup['dp'])
  assert generate.generate(again, plan, str(tmp_path), progress=False) == dict(sampled=2, kept=1)
  assert again.chunks == 2 and first.stat().st_mtime_ns == stamp
  fresh = tmp_path / 'fresh'
  generate.generate(setup['dp'], plan, str(fresh), progress=False)
  np.testing.assert_array_equal(_images(tmp_path, plan), _images(fresh, plan))
  with pytest.raises(errors.ConfigError, match='another plan'):
    generate.generate(setup['dp'], _plan(seed=1), str(tmp_path), progress=False)


def test_two_processes_of_two_devices_give_one_devices_images_and_metrics(setup, tmp_path):
  """Of a training run folder (--workdir): every process restores its params (defect: only process 0 did)."""
  plan = _plan()
  dp = generator.from_run(str(setup['run'])).driver(batch_size=2, devices=jax.devices()[:1])
  generate.generate(dp, plan, str(tmp_path), progress=False)
  want = _images(tmp_path, plan)
  assert want.shape == (N, 4, 4, 3) and want.dtype == np.uint8 and len(np.unique(want)) > 10
  _, err = setup['multi'].communicate(timeout=600)
  assert setup['multi'].returncode == 0, err[-4000:]
  multi = setup['root'] / 'multi'
  np.testing.assert_array_equal(_images(multi / 'samples', plan), want)
  adm = np.load(multi / 'adm.npz')
  np.testing.assert_array_equal(adm['arr_0'], want)
  np.testing.assert_array_equal(adm['arr_1'], plan.labels(np.arange(N)))
  record = json.loads((multi / 'metrics.json').read_text())
  assert set(quality.METRIC_KEYS) | {'num_images', 'cfg', 'top_k', 'top_p', 'seed', 'seconds'} <= set(record)
  assert (record['num_images'], record['top_k'], record['cfg']) == (N, 8, 1.5)
  assert record['fid'] > 0 and record['is_mean'] >= 1 and 0 <= record['sample_accuracy'] <= 1
  assert 0 <= record['precision'] <= 1 and 0 <= record['recall'] <= 1
  logits = np.asarray(tiny_features(None, want)[1])
  labels = plan.labels(np.arange(N))
  per_class = [np.mean(np.argmax(logits[labels == c], 1) == c) for c in range(CLASSES)]
  assert record['sample_accuracy'] == pytest.approx(np.mean(per_class))


def _fd(a, b):
  """Closed-form Fréchet distance in float64, written out here."""
  mu_a, mu_b = a.mean(0), b.mean(0)
  s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * linalg.sqrtm(s_a @ s_b).real))


def _run(saved, *argv):
  return subprocess.run([sys.executable, str(saved['root'] / 'wrapper.py'), '--noprogress', *argv], cwd=REPO,
                        env=_env(), capture_output=True, text=True, timeout=300)


def test_without_features_only_the_samples_are_written(saved, tmp_path):
  proc = _run(saved, *saved['model_flags'], f'--num_samples={CLASSES}', f'--out={tmp_path / "out"}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['samples']
  assert len(list((tmp_path / 'out' / 'samples').glob('chunk_*.npz'))) == 1


def test_non_finite_figures_are_written_as_null_with_a_note():
  record = dict(fid=float('nan'), is_mean=float('inf'), precision=0.5, num_images=4)
  notes = evaluate._null_non_finite(record)
  assert record == dict(fid=None, is_mean=None, precision=0.5, num_images=4)
  assert len(notes) == 2 and 'fid' in notes[0] and 'is_mean' in notes[1]


class _Refusing:
  def sample(self, plan, indices):
    raise ValueError('top_k must be in [0, 16] (0 = off), got -5')


class _Blank:
  def sample(self, plan, indices):
    return np.zeros((len(indices), 4, 4, 3), np.uint8)


def test_a_plan_the_sampler_refuses_leaves_no_trace_and_the_corrected_one_runs(tmp_path):
  out = tmp_path / 'out'
  with pytest.raises(ValueError, match='top_k'):
    generate.generate(_Refusing(), _plan(knobs=dict(KNOBS, top_k=-5)), str(out), progress=False)
  assert not out.exists()
  assert generate.generate(_Blank(), _plan(), str(out), progress=False) == dict(sampled=3, kept=0)
  assert (out / generate.PLAN_JSON).exists()


def test_images_against_reference_folders(saved, tmp_path):
  ref = saved['ref_images']
  images = 255 - ref[:12]
  _save_pngs(tmp_path / 'a', images)
  proc = _run(saved, f'--images={tmp_path / "a"}', f'--reference={saved["root"] / "ref"}', '--features=tiny',
              f'--out={tmp_path / "out"}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  record = json.loads((tmp_path / 'out' / 'metrics.json').read_text())
  feats = lambda x: np.asarray(tiny_features(None, x)[0], np.float64)
  assert record['fid'] == pytest.approx(_fd(feats(images), feats(ref)), rel=1e-4)
  assert record['num_images'] == 12 and record['sample_accuracy'] is None and record['is_mean'] > 1
  assert any('sample_accuracy' in n for n in record['notes'])


def test_stats_only_reference_skips_precision_recall_and_checks_dimension(tmp_path):
  ext = tiny_extractor()
  np.savez(tmp_path / 'stats.npz', mu=np.zeros(4), sigma=np.eye(4))
  ref, notes = quality.reference(str(tmp_path / 'stats.npz'), ext)
  assert ref.features is None and ref.stats.dim == 4 and 'precision/recall' in notes[0]
  np.savez(tmp_path / 'wrong.npz', mu=np.zeros(5), sigma=np.eye(5))
  with pytest.raises(errors.ConfigError, match='wrong.npz'):
    quality.reference(str(tmp_path / 'wrong.npz'), ext)


@pytest.mark.parametrize('overrides, message', [
    (dict(images='x', features=None), '--images needs --features'),
    (dict(cfg=float('nan')), r'--cfg must be >= 0 and finite, got nan'),
    (dict(top_k=-5), r'--top_k must be in \[0, vocabulary size\] \(0 = off\), got -5'),
    (dict(top_p=1.0), r'--top_p must be in \[0, 1\)'),
    (dict(out=__file__), r'--out: .* exists and is not a folder'),
    (dict(images=None, var='v.pth'), '--var needs --tokenizer'),
    (dict(reference='r.npz', features=None), '--reference needs --features'),
    (dict(chunk_size=0), '--chunk_size must be positive'),
])
def test_flag_checks(overrides, message):
  f = dict(images='x', var=None, workdir=None, tokenizer=None, out='o', reference=None, features='tiny', cfg=1.5,
           top_k=900, top_p=0.96, num_samples=1, per_class=1, batch_size=1, chunk_size=1, feature_batch_size=1)
  with pytest.raises(errors.ConfigError, match=message):
    evaluate._check_flags(types.SimpleNamespace(**dict(f, **overrides)))


@pytest.mark.parametrize('argv, message', [
    (('--images=x.npz', '--features=inception:/no/such/pt_inception.pth', '--out=o'), '/no/such/pt_inception.pth'),
    (('--num_samples=10', '--out=o'), 'num_samples=10'),
])
def test_bad_input_is_one_line_with_exit_code_2(saved, argv, message):
  argv = saved['model_flags'] + list(argv) if argv[0].startswith('--num_samples') else argv
  proc = _run(saved, *argv)
  assert proc.returncode == errors.ConfigError.exit_code, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
  assert proc.stderr.startswith('var-evaluate: error: ') and message in proc.stderr


def test_npz_images_with_labels_give_sample_accuracy_and_mixed_sizes_are_refused(tmp_path):
  images = np.random.default_rng(1).integers(0, 256, (20, 4, 4, 3), dtype=np.uint8)
  labels = np.arange(20) % CLASSES
  np.savez(tmp_path / 'samples.npz', arr_0=images, arr_1=labels)
  samples = quality.featurise(tiny_extractor(), quality.image_batches(str(tmp_path / 'samples.npz')))
  record = quality.measure(samples, None, CLASSES)
  hits = np.argmax(np.asarray(tiny_features(None, images)[1]), 1) == labels
  assert record['sample_accuracy'] == pytest.approx(np.mean([hits[labels == c].mean() for c in range(CLASSES)]))
  assert record['fid'] is None and record['num_images'] == 20
  _save_pngs(tmp_path / 'mixed', images[:2])
  PIL.Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / 'mixed' / 'big.png')
  with pytest.raises(errors.ConfigError, match='big.png'):
    list(quality.image_batches(str(tmp_path / 'mixed')))
