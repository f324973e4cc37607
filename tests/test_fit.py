"""Scaling-law fits: the Chinchilla reference numbers, recovery of known laws, and bad input."""
import csv
import json
import subprocess
import sys
import time
import warnings

from conftest import REPO, SHARED
import numpy as np
import pytest

from var_jax import errors
from var_jax.scaling import fit

CHINCHILLA_CSV = SHARED / 'data' / 'chinchilla_fig4_epoch_extracted.csv'


@pytest.fixture(scope='module')
def chinchilla_table():
  if not CHINCHILLA_CSV.exists():
    pytest.skip(f'{CHINCHILLA_CSV} not found (set VAR_JAX_SHARED to the folder holding data/)')
  return fit.load_table(str(CHINCHILLA_CSV), {'Model Size': 'params', 'Training FLOP': 'flops'})


def _inside(value, ci):
  return ci[0] <= value <= ci[1]


def test_chinchilla_fig4_reproduces_epoch_replication(chinchilla_table):
  start = time.perf_counter()
  result = fit.fit_table(chinchilla_table, 'chinchilla', n_bootstrap=8, tokens_from_flops=True, drop_highest=5)
  seconds = time.perf_counter() - start
  assert result['n_points'] == 240
  assert abs(result['E'] - 1.817) < 0.02
  assert abs(result['alpha'] - 0.347) < 0.01
  assert abs(result['beta'] - 0.367) < 0.01
  assert result['a'] == pytest.approx(result['beta'] / (result['alpha'] + result['beta']))
  assert seconds < 60


def test_power_law_recovers_known_law():
  rng = np.random.default_rng(1)
  x = np.logspace(7, 10, 12)
  y = (3e-6 * x) ** -0.2 * np.exp(rng.normal(0, 0.01, x.size))
  result = fit.fit_power(x, y, n_bootstrap=500)
  assert _inside(-0.2, result['alpha_ci']) and _inside(3e-6, result['beta_ci'])
  assert abs(result['alpha'] + 0.2) < 0.01
  assert result['r'] < -0.99


def test_chinchilla_law_recovers_known_law():
  rng = np.random.default_rng(2)
  n, d = (g.ravel() for g in np.meshgrid(np.logspace(7, 9.5, 6), np.logspace(8.5, 11, 6)))
  truth = dict(E=1.7, A=400.0, B=1500.0, alpha=0.33, beta=0.3)
  y = (truth['E'] + truth['A'] / n ** truth['alpha'] + truth['B'] / d ** truth['beta']) * np.exp(
      rng.normal(0, 0.003, n.size))
  result = fit.fit_chinchilla(n, d, y, n_bootstrap=20)
  for k, v in truth.items():
    assert _inside(v, result[f'{k}_ci']), (k, v, result[f'{k}_ci'])


def test_isoflop_recovers_known_allocation():
  # Loss exactly parabolic in log N around N_opt = 0.1 C^0.5 per budget, D = C / (6 N), plus noise.
  rng = np.random.default_rng(3)
  rows = []
  for c in (1e15, 1e16, 1e17, 1e18):
    n_opt = 0.1 * c ** 0.5
    for n in n_opt * np.logspace(-0.6, 0.6, 7):
      y = 3.0 * c ** -0.05 + 0.05 * np.log(n / n_opt) ** 2 + rng.normal(0, 0.002)
      rows.append((c * (1 + rng.uniform(-0.01, 0.01)), n, c / (6 * n), y))
  c, n, d, y = map(np.array, zip(*rows))
  result = fit.fit_isoflop(c, n, y, d, n_bootstrap=200)
  assert len(result['budgets']) == 4
  assert _inside(0.5, result['n_exponent_ci']) and _inside(0.5, result['d_exponent_ci'])
  assert _inside(0.1, result['n_coefficient_ci'])
  assert abs(result['n_exponent'] - 0.5) < 0.02


def test_pareto_frontier():
  c = np.array([1, 2, 2, 3, 4, 5.0])
  y = np.array([5, 4, 6, 4.5, 3, 3.0])
  assert fit.pareto_frontier(c, y).tolist() == [0, 1, 4]


def _table(rows):
  keys = rows[0].keys()
  return {k: [r[k] for r in rows] for k in keys}


def test_failed_and_nan_runs_are_left_out_by_name():
  rows = [dict(run_id=f'd{d}', params=1e6 * d ** 3, loss=5 * d ** -0.3, status='done') for d in (2, 4, 6, 8)]
  rows += [dict(run_id='d10-x', params=1e9, loss=0.1, status='failed'),
           dict(run_id='d12-y', params=2e9, loss='nan', status='done'),
           dict(run_id='d14-z', params='', loss=2.0, status='done')]
  with pytest.warns(fit.DroppedRunsWarning, match=r'3 of 7.*d10-x \(status failed\).*d12-y.*d14-z'):
    result = fit.fit_table(_table(rows), 'power', x='params', n_bootstrap=10)
  assert result['n_points'] == 4 and result['run_ids'] == ['d2', 'd4', 'd6', 'd8']
  assert result['alpha'] == pytest.approx(-0.1, rel=1e-6)  # loss = 5 d^-0.3 = c * params^-0.1


def test_too_few_points_is_a_clear_error():
  rows = [dict(params=1e6 * d, tokens=1e8 * d, loss=3.0 / d) for d in (1, 2, 3, 4)]
  with pytest.raises(ValueError, match='chinchilla law has 5 parameters but only 4 usable points'):
    fit.fit_table(_table(rows), 'chinchilla')
  with pytest.raises(ValueError, match=r"columns \['flops'\] are needed"):
    fit.fit_table(_table(rows), 'power', x='flops')


def test_missing_results_csv_names_the_fix(tmp_path):
  with pytest.raises(errors.ConfigError, match='aggregate_only'):
    fit.load_table(str(tmp_path))


def test_missing_csv_is_a_config_error_naming_it(tmp_path):
  with pytest.raises(errors.ConfigError, match='nope.csv: no such file'):
    fit.load_table(str(tmp_path / 'nope.csv'))


def test_bootstrap_resamples_with_a_flat_loss_are_left_out_without_numpy_warnings():
  x, y = np.array([1e3, 1e4, 1e5, 1e6]), np.array([3.0, 3.0, 3.0, 2.0])
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    out = fit.fit_power(x, y, n_bootstrap=200)
  assert np.isfinite(out['beta']) and np.all(np.isfinite(out['beta_ci']))
  with pytest.raises(errors.ConfigError, match='flat'):
    fit.fit_power(x[:3], y[:3])


def test_the_library_run_as_a_script_points_to_the_command():
  proc = subprocess.run([sys.executable, '-m', 'var_jax.scaling.fit'], cwd=REPO, capture_output=True, text=True)
  assert proc.returncode == errors.ConfigError.exit_code and 'python -m var_jax.fit' in proc.stderr


def test_cli_writes_fit_json(tmp_path):
  path = tmp_path / 'results.csv'
  with open(path, 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(['run_id', 'params', 'flops', 'loss', 'status'])
    for d in (2, 4, 6, 8):
      w.writerow([f'd{d}', 1e6 * d ** 3, 1e12 * d ** 4, 4 * d ** -0.25, 'done'])
  out = tmp_path / 'fit.json'
  subprocess.run([sys.executable, '-m', 'var_jax.fit', f'--input={tmp_path}', '--law=power',
                  '--x=flops', f'--out={out}', '--bootstrap=50'], check=True, cwd=REPO)
  result = json.loads(out.read_text())
  assert result['alpha'] == pytest.approx(-0.0625, rel=1e-6) and result['r'] == pytest.approx(-1.0)
  assert {'beta', 'alpha_ci', 'beta_ci', 'frontier'} <= set(result)


def test_chinchilla_fig4_all_points_moves_as_documented(chinchilla_table):
  # /work/shared/data/README.md: without dropping the 5 worst points the fit moves to E ~ 1.89, beta ~ 0.45.
  result = fit.fit_table(chinchilla_table, 'chinchilla', n_bootstrap=0, tokens_from_flops=True)
  assert result['n_points'] == 245
  assert abs(result['E'] - 1.89) < 0.02 and abs(result['beta'] - 0.45) < 0.02
