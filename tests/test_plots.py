"""Scaling plots and the Markdown report written from a sweep folder."""
import json
import os
import re
import subprocess
import sys

from conftest import REPO
import ml_collections
import numpy as np
import pytest

from var_jax import flops
from var_jax.scaling import fit
from var_jax.scaling import plots
from var_jax.scaling import report
from var_jax.scaling import sweep
from var_jax.train import config as config_lib

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
MODEL = dict(vocab_size=16, cvae=4, patch_nums=(1, 2), num_classes=3)


def _assert_figure(path_png):
  with open(path_png, 'rb') as f:
    assert f.read(8) == PNG_MAGIC
  svg = os.path.splitext(path_png)[0] + '.svg'
  with open(svg) as f:
    assert '<svg' in f.read(2000)


@pytest.fixture(scope='module')
def sweep_root(tmp_path_factory):
  """Four finished runs (depths 1-4) whose final loss is exactly 10 N^-0.1, and one failed run."""
  root = str(tmp_path_factory.mktemp('sweep'))
  base = config_lib.base_config()
  base.data.name = 'synthetic_tokens'
  base.model.update(MODEL)
  base.steps = 4
  c = ml_collections.ConfigDict(dict(base=base))
  c.axes = [('model.depth', (1, 2, 3, 4, 5))]
  for run in sweep.expand(c):
    run_dir = sweep.write_run_files(root, run)
    depth = run.config.model.depth
    if depth == 5:
      with open(os.path.join(run_dir, 'ERROR'), 'w') as f:
        json.dump(dict(status='diverged', error='non-finite loss=nan at step 3'), f)
      continue
    final = 10 * flops.param_counts(dict(MODEL, depth=depth))['total'] ** -0.1
    with open(os.path.join(run_dir, 'metrics.jsonl'), 'w') as f:
      for step in (1, 2, 3, 4):
        loss = final * (1 + 0.5 * (4 - step))
        f.write(json.dumps(dict(step=step, split='eval', loss=loss, loss_last_scale=loss * 1.1, acc=0.1,
                                acc_last_scale=0.1, flops_seen=step * 1e9 * depth ** 2,
                                tokens_seen=step * 1e3)) + '\n')
    with open(os.path.join(run_dir, 'DONE'), 'w') as f:
      json.dump(dict(eval=dict(step=4, loss=final, loss_last_scale=final * 1.1, acc=0.1, acc_last_scale=0.1,
                               flops_seen=4e9 * depth ** 2, tokens_seen=4e3)), f)
  sweep.aggregate(root)
  return root


def test_report_has_table_fits_and_plots(sweep_root):
  path = report.write_report(sweep_root, n_bootstrap=50)
  text = open(path).read()
  for depth in (1, 2, 3, 4, 5):
    assert f'| d{depth}-s4-' in text
  assert 'diverged' in text and '4 done, 1 diverged' in text
  fits = json.load(open(os.path.join(sweep_root, 'report', 'fits.json')))
  assert fits['power_params_loss']['alpha'] == pytest.approx(-0.1, abs=1e-9)
  assert fits['power_params_loss']['r'] == pytest.approx(-1.0)
  assert fits['power_params_loss']['n_points'] == 4
  assert '| L = (beta X)^alpha | loss | params | -0.1 [' in text
  assert 'chinchilla' in text and 'not fitted' in text  # one token budget only: said, not hidden
  for name in ('loss_vs_compute', 'loss_vs_params', 'residuals_params'):
    assert re.search(rf'^!\[[^\]]*\]\({name}\.png\)$', text, re.M), name  # an image line, not a mention
    _assert_figure(os.path.join(sweep_root, 'report', f'{name}.png'))


def test_loss_vs_compute_frontier_comes_from_every_eval_point(sweep_root):
  rows = [dict(zip(t, v)) for t in [fit.load_table(sweep_root)] for v in zip(*t.values())]
  curves = report.eval_curves(sweep_root, rows, 'loss')
  assert len(curves) == 4 and all(len(c['flops']) == 4 for c in curves)
  frontier = fit.fit_frontier(np.concatenate([c['flops'] for c in curves]),
                              np.concatenate([c['loss'] for c in curves]), n_bootstrap=10)
  assert len(frontier['flops']) >= 2 and frontier['alpha'] < 0
  paths = plots.loss_vs_compute(curves, os.path.join(sweep_root, 'alone', 'curves.png'), frontier=frontier)
  _assert_figure(paths[0])


def test_fit_cli_plot(sweep_root, tmp_path):
  out = tmp_path / 'fit.json'
  subprocess.run([sys.executable, '-m', 'var_jax.fit', f'--input={sweep_root}', '--law=power',
                  '--x=params', '--y=loss_last_scale', f'--out={out}', f'--plot={tmp_path / "fig.png"}',
                  '--bootstrap=20'], cwd=REPO, check=True, capture_output=True)
  assert json.loads(out.read_text())['alpha'] == pytest.approx(-0.1, abs=1e-9)
  _assert_figure(tmp_path / 'fig.png')


def test_isoflop_and_chinchilla_figures(tmp_path):
  rng = np.random.default_rng(0)
  rows = []
  for c in (1e15, 1e16, 1e17):
    for n in 0.1 * c ** 0.5 * np.logspace(-0.6, 0.6, 5):
      loss = 3.0 * c ** -0.05 + 0.05 * np.log(n / (0.1 * c ** 0.5)) ** 2 + rng.normal(0, 1e-3)
      rows.append(dict(run_id=f'c{c:.0e}-n{n:.0f}', flops=c, params=n, tokens=c / (6 * n), loss=loss))
  table = {k: [r[k] for r in rows] for k in rows[0]}
  for law in ('isoflop', 'chinchilla'):
    result = fit.fit_table(table, law, n_bootstrap=5)
    _assert_figure(plots.fit_figure(table, result, str(tmp_path / f'{law}.png'))[0])
