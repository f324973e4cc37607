"""Sweep runner: expansion, stable run ids, local runs with a failure, no duplicate work, results.csv."""
import csv
import io
import json
import os
import subprocess
import sys
import textwrap

from conftest import REPO
from conftest import load_experiment
import ml_collections
import pytest

from var_jax import errors
from var_jax import flops
from var_jax.scaling import sweep
from var_jax.train import config as config_lib

# A stand-in for `python -m var_jax.train`: reads the run config beside --config, logs each call,
# fails depth 3 the way the trainer reports a bad config, and writes eval records, DONE and a checkpoint
# folder otherwise. Loss = 5 depth^-0.3 at the end, higher before.
FAKE_TRAINER = textwrap.dedent('''
    import json, os, sys
    args = dict(a[2:].split('=', 1) for a in sys.argv[1:])
    with open(os.path.join(os.path.dirname(args['config']), 'run_config.json')) as f:
      cfg = json.load(f)
    workdir = args['workdir']
    with open(os.environ['FAKE_TRAINER_CALLS'], 'a') as f:
      f.write(os.path.basename(workdir) + '\\n')
    depth, steps = cfg['model']['depth'], cfg['steps']
    if depth == 3:
      sys.stderr.write('var-train: error: config: model.depth=3 is not supported here\\n')
      sys.exit(2)
    with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
      for step in range(1, steps + 1):
        loss = 5.0 * depth ** -0.3 * (1 + (steps - step) / steps)
        rec = dict(step=step, split='eval', loss=loss, loss_last_scale=loss + 0.5, acc=0.1 * depth,
                   acc_last_scale=0.05 * depth, loss_scale_0=loss - 1, loss_scale_1=loss + 1,
                   tokens_seen=step * 100.0, flops_seen=step * 1e6 * depth)
        f.write(json.dumps(rec) + '\\n')
    with open(os.path.join(workdir, 'DONE'), 'w') as f:
      json.dump(dict(step=steps, eval=rec), f)
''')


def _sweep_config(depths=(1, 2, 3), steps=(3,)):
  base = config_lib.base_config()
  base.data.name = 'synthetic_tokens'
  base.batch_size = 4
  base.model.update(dict(vocab_size=16, cvae=4, patch_nums=(1, 2), num_classes=3))
  base.tokenizer.update(dict(vocab_size=16, z_channels=4, patch_nums=(1, 2)))
  c = ml_collections.ConfigDict()
  c.base = base
  c.axes = [('model.depth', depths), ('steps', steps)]
  c.derived = [('optim.lr', lambda cfg: 1e-3 / cfg.model.depth)]
  return c


@pytest.fixture
def fake_trainer(tmp_path, monkeypatch):
  script = tmp_path / 'fake_train.py'
  script.write_text(FAKE_TRAINER)
  calls = tmp_path / 'calls.txt'
  calls.write_text('')
  monkeypatch.setenv(sweep.TRAINER_ENV, f'{sys.executable} {script}')
  monkeypatch.setenv('FAKE_TRAINER_CALLS', str(calls))
  return lambda: calls.read_text().split()


def test_expand_takes_the_product_with_explicit_rules_and_stable_ids():
  runs = sweep.expand(_sweep_config(depths=(1, 2), steps=(3, 5)))
  assert [(r.config.model.depth, r.config.steps) for r in runs] == [(1, 3), (1, 5), (2, 3), (2, 5)]
  assert [r.config.optim.lr for r in runs] == [1e-3, 1e-3, 5e-4, 5e-4]
  assert runs[0].run_id.startswith('d1-s3-') and len({r.run_id for r in runs}) == 4
  assert [r.run_id for r in sweep.expand(_sweep_config(depths=(1, 2), steps=(3, 5)))] == [r.run_id for r in runs]


def test_budgets_set_steps_from_tokens_and_flops():
  c = _sweep_config(depths=(1, 2), steps=(3,))
  c.axes = [('model.depth', (1, 2)), ('flops', (1e12,))]
  c.runs = [{'model.embed_dim': 128, 'model.num_heads': 2}]
  runs = sweep.expand(c)
  for r in runs:
    kw = dict(depth=r.config.model.depth, embed_dim=128, num_heads=2, vocab_size=16, cvae=4, patch_nums=(1, 2),
              num_classes=3)
    assert r.config.steps == round(1e12 / flops.train_flops_per_image(kw) / 4)
  assert runs[0].config.steps > runs[1].config.steps  # same compute, bigger model, fewer steps
  c.axes = [('model.depth', (1,)), ('tokens', (4 * 5 * 10,))]  # 5 tokens per image, batch 4 -> 10 steps
  assert sweep.expand(c)[0].config.steps == 10


@pytest.mark.parametrize('axes,msg', [
    ([('model.no_such_key', (1,))], "unknown config key 'model.no_such_key'"),
    ([('model.depth', 3)], 'each axis must be'),
    ([('tokens', (1e9,)), ('flops', (1e9,))], 'one data budget'),
    ([('epochs', (1,))], 'images_per_epoch'),
])
def test_bad_sweep_files_are_clear_errors(axes, msg):
  c = _sweep_config()
  c.axes = axes
  with pytest.raises(errors.ConfigError, match=msg):  # exit 2 with one line, not a traceback
    sweep.expand(c)


def test_local_sweep_records_failure_skips_done_runs_and_writes_results(tmp_path, fake_trainer):
  root = str(tmp_path / 'root')
  out = io.StringIO()
  rows = sweep.launch(_sweep_config(), root, 'local', report=False, out=out)
  failed = [r['run_id'] for r in rows if r['status'] == 'failed']
  with pytest.raises(errors.RunsFailedError, match=rf'1 of 3 runs did not finish: {failed[0]} \(failed\)'):
    sweep.check_finished(rows)
  assert sorted(fake_trainer()) == sorted(r.run_id for r in sweep.expand(_sweep_config()))
  log = out.getvalue()
  assert '[3/3]' in log and 'failed (exit 2): var-train: error: config: model.depth=3' in log

  with open(os.path.join(root, 'results.csv')) as f:
    rows = {r['depth']: r for r in csv.DictReader(f)}
  assert [rows[d]['status'] for d in '123'] == ['done', 'done', 'failed']
  assert 'model.depth=3 is not supported' in rows['3']['error'] and rows['3']['loss'] == ''
  assert float(rows['2']['loss']) == pytest.approx(5.0 * 2 ** -0.3)
  assert float(rows['2']['loss_last_scale']) == pytest.approx(5.0 * 2 ** -0.3 + 0.5)
  assert float(rows['1']['flops']) == 3e6 and float(rows['1']['tokens']) == 300
  assert int(rows['1']['images']) == 3 * 4
  assert float(rows['2']['loss_scale_1']) == pytest.approx(5.0 * 2 ** -0.3 + 1)
  kw = dict(depth=2, vocab_size=16, cvae=4, patch_nums=(1, 2), num_classes=3)
  assert int(rows['2']['params']) == flops.param_counts(kw)['total']
  assert int(rows['2']['params_nonembed']) == flops.param_counts(kw)['nonembed']
  assert int(rows['2']['width']) == 128

  calls = len(fake_trainer())
  out = io.StringIO()
  sweep.launch(_sweep_config(), root, 'local', report=False, out=out)
  assert len(fake_trainer()) == calls  # nothing reran: two done, one recorded as failed
  assert '0 to run' in out.getvalue() and '2 done, 1 failed' in out.getvalue()

  sweep.launch(_sweep_config(), root, 'local', retry_failed=True, report=False, out=io.StringIO())
  assert len(fake_trainer()) == calls + 1


def test_partial_run_is_resumed(tmp_path, fake_trainer):
  root = str(tmp_path / 'root')
  run = sweep.expand(_sweep_config(depths=(2,)))[0]
  run_dir = sweep.write_run_files(root, run)
  open(os.path.join(run_dir, 'metrics.jsonl'), 'w').close()
  out = io.StringIO()
  sweep.launch(_sweep_config(depths=(2,)), root, 'local', report=False, out=out)
  assert f'{run.run_id}: resuming' in out.getvalue() and fake_trainer() == [run.run_id]


def test_results_keep_a_run_whose_model_config_is_invalid(tmp_path):
  c = _sweep_config(depths=(2,))
  c.runs = [{'model.num_heads': 7}]
  sweep.write_run_files(str(tmp_path), sweep.expand(c)[0])
  [row] = sweep.aggregate(str(tmp_path))
  assert row['depth'] == 2 and row['heads'] == 7 and 'params' not in row and row['status'] == 'pending'


def test_run_config_file_loads_the_run_config_through_config_flags(tmp_path):
  from absl import flags
  from ml_collections import config_flags
  run = sweep.expand(_sweep_config(depths=(2,)))[0]
  run_dir = sweep.write_run_files(str(tmp_path), run)
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, '', flag_values=fv)
  fv(['x', sweep.train_args(run_dir)[0]])
  assert sweep.config_hash(fv.config) == sweep.config_hash(run.config)
  assert fv.config.model.patch_nums == (1, 2)


def test_cli_print_launcher_and_aggregate_only(tmp_path):
  sweep_file = tmp_path / 'my_sweep.py'
  sweep_file.write_text(textwrap.dedent('''
      import ml_collections
      from var_jax.train import config as config_lib
      def get_config(arg=None):
        c = ml_collections.ConfigDict()
        c.base = config_lib.base_config()
        c.base.data.name = 'synthetic_tokens'
        c.axes = [('model.depth', (2, 4))]
        return c
  '''))
  root = tmp_path / 'root'
  cmd = [sys.executable, '-m', 'var_jax.sweep', f'--config={sweep_file}', f'--workdir={root}']
  printed = subprocess.run(cmd + ['--launcher=print', '--config.base.steps=7'], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.splitlines()
  assert len(printed) == 2 and all('-m var_jax.train --config=' in line for line in printed)
  assert 'd2-s7-' in printed[0] and 'd4-s7-' in printed[1]
  subprocess.run(cmd + ['--aggregate-only', '--noreport'], cwd=REPO, check=True, capture_output=True)
  with open(root / 'results.csv') as f:
    assert [r['status'] for r in csv.DictReader(f)] == ['pending', 'pending']
  bad = subprocess.run(cmd + ['--launcher=print', '--config.base.model.depth_x=3'],
                       cwd=REPO, capture_output=True, text=True)
  assert bad.returncode != 0 and 'depth_x' in bad.stderr


@pytest.mark.slow
def test_real_trainer_sweep_with_one_failing_run(tmp_path):
  """Two runs of the real `python -m var_jax.train` (smoke model, in-memory tokens, 2 steps each),
  one with a width its heads do not divide: the other finishes, the failure is recorded with the
  trainer's error, and a second invocation starts nothing."""
  base = load_experiment('smoke', 'tokens')
  base.steps = 2
  base.log.every_steps = base.eval.every_steps = base.checkpoint.every_steps = 2
  c = ml_collections.ConfigDict(dict(base=base))
  c.runs = [{'model.depth': 1}, {'model.depth': 2, 'model.num_heads': 7}]
  root = str(tmp_path / 'root')
  sweep.launch(c, root, 'local', report=False, out=io.StringIO())
  with open(os.path.join(root, 'results.csv')) as f:
    rows = list(csv.DictReader(f))
  assert [(r['depth'], r['status']) for r in rows] == [('1', 'done'), ('2', 'failed')]
  assert 'divisible' in rows[1]['error']
  assert float(rows[0]['loss']) > 0 and float(rows[0]['flops']) > 0
  logs = {r['run_id']: open(os.path.join(root, r['run_id'], 'train.log')).read() for r in rows}
  out = io.StringIO()
  sweep.launch(c, root, 'local', report=False, out=out)
  assert '0 to run' in out.getvalue()
  assert logs == {r['run_id']: open(os.path.join(root, r['run_id'], 'train.log')).read() for r in rows}


def test_imagenet_sweep_follows_the_paper_sizes_and_official_recipe():
  runs = sweep.expand(load_experiment('var_imagenet_scaling', '/ckpt/vae.pth'))
  by_depth = {r.config.model.depth: r.config for r in runs}
  assert sorted(by_depth) == list(range(6, 31, 2))
  d16, d30 = by_depth[16], by_depth[30]
  assert (d16.batch_size, d30.batch_size) == (768, 1024)
  assert d16.steps == round(200 * 1_281_167 / 768) and d30.steps == round(350 * 1_281_167 / 1024)
  assert (d16.optim.base_lr, d30.optim.base_lr) == (1e-4, 8e-5)
  assert all(c.tokenizer.path == '/ckpt/vae.pth' and c.data.name == 'imagenet2012' for c in by_depth.values())


def test_imagenet_sweep_trains_only_the_depths_named_after_the_tokenizer():
  runs = sweep.expand(load_experiment('var_imagenet_scaling', '/ckpt/vae.pth,16,20'))
  assert [r.config.model.depth for r in runs] == [16, 20]
  with pytest.raises(ValueError, match='must be integers'):
    load_experiment('var_imagenet_scaling', '/ckpt/vae.pth,sixteen')


# A stand-in for `python -m var_jax.evaluate`: logs its arguments, fails depth 4 with a one-line error, and
# otherwise writes quality/metrics.json with fid = 100 C^-0.5 and sample_accuracy = 0.01 C^0.25 of the run's
# final training compute C (the fake trainer's flops_seen, 3e6 * depth).
FAKE_EVALUATOR = textwrap.dedent('''
    import json, os, sys
    args = dict(a[2:].split('=', 1) for a in sys.argv[1:] if '=' in a)
    with open(os.environ['FAKE_EVALUATOR_CALLS'], 'a') as f:
      f.write(json.dumps(sys.argv[1:]) + '\\n')
    with open(os.path.join(args['workdir'], 'run_config.json')) as f:
      depth = json.load(f)['model']['depth']
    if depth == 4:
      sys.stderr.write('var-evaluate: error: reference file r.npz: statistics of dimension 5\\n')
      sys.exit(2)
    c = 3e6 * depth
    os.makedirs(args['out'])
    with open(os.path.join(args['out'], 'metrics.json'), 'w') as f:
      json.dump(dict(fid=100 * c ** -0.5, is_mean=1.0 + depth, is_std=0.1 * depth, precision=None, recall=None,
                     sample_accuracy=0.01 * c ** 0.25, num_images=int(args['num_samples'])), f)
''')


def test_sweep_evaluates_finished_runs_and_reports_quality_laws(tmp_path, fake_trainer, monkeypatch):
  from var_jax.scaling import evaluation
  from var_jax.scaling import fit as fit_lib
  from var_jax.scaling import runs as runs_lib
  script, calls = tmp_path / 'fake_evaluate.py', tmp_path / 'eval_calls.txt'
  script.write_text(FAKE_EVALUATOR)
  calls.write_text('')
  monkeypatch.setenv(evaluation.EVALUATOR_ENV, f'{sys.executable} {script}')
  monkeypatch.setenv('FAKE_EVALUATOR_CALLS', str(calls))
  c = _sweep_config(depths=(1, 2, 3, 4, 5))
  c.eval = ml_collections.ConfigDict(dict(generate=dict(num_samples=30, features='shapes:cls.npz',
                                                        reference='ref.npz', top_k=4, more_smooth=False)))
  root = str(tmp_path / 'root')
  out = io.StringIO()
  sweep.launch(c, root, 'local', out=out)
  argv = [json.loads(line) for line in calls.read_text().splitlines()]
  assert len(argv) == 4  # depth 3 failed training: not evaluated
  assert {'--num_samples=30', '--features=shapes:cls.npz', '--reference=ref.npz', '--top_k=4', '--nomore_smooth',
          '--noprogress'} <= set(argv[0])
  assert 'evaluation failed (exit 2): var-evaluate: error: reference file' in out.getvalue()

  with open(os.path.join(root, 'results.csv')) as f:
    rows = {r['depth']: r for r in csv.DictReader(f)}
  assert float(rows['2']['fid']) == pytest.approx(100 * 6e6 ** -0.5)
  assert float(rows['5']['sample_accuracy']) == pytest.approx(0.01 * 15e6 ** 0.25)
  assert rows['2']['precision'] == '' and rows['3']['fid'] == '' and rows['4']['fid'] == ''
  assert 'statistics of dimension 5' in rows['4']['quality_error']
  fits = json.loads(open(os.path.join(root, 'report', 'fits.json')).read())
  assert fits['power_flops_fid']['alpha'] == pytest.approx(-0.5, abs=1e-6)
  assert fits['power_flops_sample_accuracy']['alpha'] == pytest.approx(0.25, abs=1e-6)
  assert fits['power_flops_fid']['n_points'] == 3 and 'power_params_fid' in fits
  report = open(os.path.join(root, 'report', 'report.md')).read()
  assert '![fid against training FLOPs' in report and '| status | fid | is_mean |' in report
  assert os.path.exists(os.path.join(root, 'report', 'fid_vs_flops.png'))
  assert set(runs_lib.QUALITY_COLUMNS) <= set(fit_lib.load_table(root))

  sweep.launch(c, root, 'local', report=False, out=io.StringIO())
  assert len(calls.read_text().splitlines()) == 5  # only the failed evaluation ran again


def test_quality_columns_are_the_evaluate_metrics():
  from var_jax.eval import quality
  from var_jax.scaling import runs as runs_lib
  assert runs_lib.QUALITY_COLUMNS == quality.METRIC_KEYS
