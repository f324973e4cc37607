"""Scaling-law fits: power law, Chinchilla L(N, D), IsoFLOP parabolas, and the compute frontier.

  power       L = (beta X)^alpha, least squares in log-log space (VAR paper form; alpha < 0).
  chinchilla  L(N, D) = E + A / N^alpha + B / D^beta, minimising the summed Huber loss (delta 1e-3) of
              log-loss residuals in the log-sum-exp parametrisation of Hoffmann et al. / Epoch AI
              (log L = LSE(a - alpha log N, b - beta log D, e), A = e^a, B = e^b, E = e^e), with
              L-BFGS-B started from the best points of Hoffmann's grid.
  isoflop     per compute budget a parabola of loss in log N (and in log D when tokens are known), whose
              minima give power laws N_opt = k C^a and D_opt = k C^b.
  frontier    the Pareto frontier of loss against compute, with a power law fitted to it.

Every law gets 95% percentile intervals from a bootstrap over runs (`*_ci`).

The command line is `python -m var_jax.fit` (var_jax/cli/fit.py).
"""
import csv
import itertools
import math
import os
import sys
import time
import warnings
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
from scipy import optimize

from var_jax import errors

LAWS = ('power', 'chinchilla', 'isoflop')
X_COLUMNS = ('params', 'flops', 'tokens')
# Statuses that the sweep runner writes for finished runs; rows without a status column count as finished.
OK_STATUSES = ('', 'done')
HUBER_DELTA = 1e-3
_MAX_LOG = 700.0  # exp() of more overflows float64
# Hoffmann et al. (2022) initialisation grid over (a, b, e, alpha, beta): 6 * 6 * 5 * 5 * 5 = 4500 starts.
CHINCHILLA_GRID = (np.arange(0, 30, 5.0), np.arange(0, 30, 5.0), np.arange(-1, 1.5, 0.5),
                   np.arange(0, 2.5, 0.5), np.arange(0, 2.5, 0.5))


class DroppedRunsWarning(UserWarning):
  """Rows left out of a fit (missing, NaN, non-positive or not finished)."""


# ---------------------------------------------------------------------------------------------------
# Reading runs.
# ---------------------------------------------------------------------------------------------------


def load_table(path: str, rename: Optional[Mapping[str, str]] = None) -> dict[str, list[str]]:
  """Reads a results CSV (or ROOT/results.csv for a sweep folder) into {column: [cells]}.

  `rename` maps CSV column names to the names used here (e.g. {'Model Size': 'params'}).
  """
  if os.path.isdir(path):
    path = os.path.join(path, 'results.csv')
    if not os.path.exists(path):
      raise errors.ConfigError(f'{path} not found; write it with `python -m var_jax.sweep --aggregate_only`')
  if not os.path.isfile(path):
    raise errors.ConfigError(f'{path}: no such file (a results.csv or a sweep folder holding one)')
  with open(path, newline='') as f:
    rows = list(csv.DictReader(f))
  if not rows:
    raise errors.ConfigError(f'{path} has no data rows')
  rename = dict(rename or {})
  missing = [k for k in rename if k not in rows[0]]
  if missing:
    raise errors.ConfigError(f'{path}: columns {missing} not found (have {list(rows[0])})')
  return {rename.get(k, k): [r[k] for r in rows] for k in rows[0]}


def _to_float(cell: Any) -> float:
  try:
    return float(cell)
  except (TypeError, ValueError):
    return math.nan


def usable_columns(table: Mapping[str, Sequence[Any]], columns: Sequence[str]) -> dict[str, np.ndarray]:
  """Float arrays of `columns` over the rows that are finished, finite and positive in all of them.

  Left-out rows are named (by run_id, else row number) in one DroppedRunsWarning.
  """
  missing = [c for c in columns if c not in table]
  if missing:
    raise errors.ConfigError(f'columns {missing} are needed but the table has {sorted(table)}')
  n = len(table[columns[0]])
  names = list(table.get('run_id', [f'row {i + 1}' for i in range(n)]))
  status = [str(s or '').strip().lower() for s in table.get('status', [''] * n)]
  values = {c: np.array([_to_float(v) for v in table[c]]) for c in columns}
  keep = np.ones(n, bool)
  reasons = []
  for i in range(n):
    if status[i] not in OK_STATUSES:
      keep[i] = False
      reasons.append(f'{names[i]} (status {status[i]})')
      continue
    bad = [c for c in columns if not (np.isfinite(values[c][i]) and values[c][i] > 0)]
    if bad:
      keep[i] = False
      reasons.append(f'{names[i]} (missing/NaN/non-positive {", ".join(bad)})')
  if reasons:
    warnings.warn(f'left out {len(reasons)} of {n} runs: ' + '; '.join(reasons), DroppedRunsWarning, stacklevel=2)
  out = {c: v[keep] for c, v in values.items()}
  out['run_id'] = np.array(names, dtype=object)[keep]
  return out


def _require_points(n_points: int, n_params: int, law: str) -> None:
  if n_points < n_params:
    raise errors.ConfigError(f'the {law} law has {n_params} parameters but only {n_points} usable points')


def _ci(samples: np.ndarray) -> list[float]:
  """95% percentile interval of the finite bootstrap samples (NaNs when there are none)."""
  samples = np.asarray(samples, float)
  samples = samples[np.isfinite(samples)]
  if samples.size == 0:
    return [math.nan, math.nan]
  return [float(np.percentile(samples, 2.5)), float(np.percentile(samples, 97.5))]


def _bootstrap(fit_once: Callable[[np.ndarray], Mapping[str, float]], n: int, n_bootstrap: int, seed: int,
               strata: Optional[np.ndarray] = None) -> dict[str, list[float]]:
  """Percentile CIs of each value `fit_once(indices)` returns, resampling rows (within strata if given)."""
  rng = np.random.default_rng(seed)
  groups = [np.arange(n)] if strata is None else [np.flatnonzero(strata == s) for s in np.unique(strata)]
  draws: dict[str, list[float]] = {}
  for _ in range(n_bootstrap):
    idx = np.concatenate([rng.choice(g, size=g.size, replace=True) for g in groups])
    try:
      values = fit_once(idx)
    except (ValueError, np.linalg.LinAlgError, FloatingPointError):
      continue  # a degenerate resample (e.g. one distinct x) has no fit; it is left out of the interval
    for k, v in values.items():
      draws.setdefault(k, []).append(v)
  return {f'{k}_ci': _ci(v) for k, v in draws.items()}


# ---------------------------------------------------------------------------------------------------
# Power law L = (beta X)^alpha.
# ---------------------------------------------------------------------------------------------------


def _power_lsq(log_x: np.ndarray, log_y: np.ndarray) -> dict[str, float]:
  if np.ptp(log_x) == 0:
    raise errors.ConfigError('power law needs at least two distinct x values')
  alpha, intercept = np.polyfit(log_x, log_y, 1)
  log_beta = intercept / alpha if alpha else math.inf
  if not abs(log_beta) < _MAX_LOG:
    raise errors.ConfigError(f'power law: the loss is flat in x (slope {alpha:.3g}): beta = exp({log_beta:.3g}) '
                             'is out of range')
  return dict(alpha=float(alpha), beta=math.exp(log_beta))


def fit_power(x: np.ndarray, y: np.ndarray, n_bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
  """L = (beta x)^alpha by least squares of log L on log x; `r` is the log-log Pearson correlation."""
  x, y = np.asarray(x, float), np.asarray(y, float)
  _require_points(x.size, 2, 'power')
  lx, ly = np.log(x), np.log(y)
  out = _power_lsq(lx, ly)
  out['r'] = float(np.corrcoef(lx, ly)[0, 1]) if x.size > 2 else math.nan
  out.update(_bootstrap(lambda i: _power_lsq(lx[i], ly[i]), x.size, n_bootstrap, seed))
  out['n_points'] = int(x.size)
  return out


def predict_power(fit: Mapping[str, float], x: np.ndarray) -> np.ndarray:
  return (fit['beta'] * np.asarray(x, float)) ** fit['alpha']


# ---------------------------------------------------------------------------------------------------
# Chinchilla L(N, D) = E + A / N^alpha + B / D^beta.
# ---------------------------------------------------------------------------------------------------


def _chinchilla_objective(p: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_y: np.ndarray,
                          delta: float) -> tuple[float, np.ndarray]:
  """Summed Huber loss of log-residuals and its gradient w.r.t. p = (a, b, e, alpha, beta)."""
  a, b, e, alpha, beta = p
  z_3P = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
  m_P = z_3P.max(0)
  w_3P = np.exp(z_3P - m_P)
  s_P = w_3P.sum(0)
  r_P = m_P + np.log(s_P) - log_y
  abs_r = np.abs(r_P)
  loss = np.where(abs_r <= delta, 0.5 * r_P * r_P, delta * (abs_r - 0.5 * delta)).sum()
  g_3P = np.clip(r_P, -delta, delta) * w_3P / s_P
  grad = np.array([g_3P[0].sum(), g_3P[1].sum(), g_3P[2].sum(),
                   -(g_3P[0] * log_n).sum(), -(g_3P[1] * log_d).sum()])
  return float(loss), grad


def _chinchilla_grid_losses(starts_G5: np.ndarray, log_n, log_d, log_y, delta) -> np.ndarray:
  """Objective at every grid start at once (for choosing which starts to optimise from)."""
  a, b, e, alpha, beta = (starts_G5[:, i:i + 1] for i in range(5))
  z_3GP = np.stack([a - alpha * log_n, b - beta * log_d, np.broadcast_to(e, (e.shape[0], log_n.size))])
  r_GP = np.logaddexp.reduce(z_3GP, axis=0) - log_y
  abs_r = np.abs(r_GP)
  return np.where(abs_r <= delta, 0.5 * r_GP ** 2, delta * (abs_r - 0.5 * delta)).sum(1)


def _chinchilla_params(p: np.ndarray, mu_n: float, mu_d: float) -> dict[str, float]:
  """Public parameters from the centred ones (see fit_chinchilla)."""
  a_c, b_c, e, alpha, beta = (float(v) for v in p)
  return dict(E=math.exp(e), A=math.exp(a_c + alpha * mu_n), B=math.exp(b_c + beta * mu_d), alpha=alpha,
              beta=beta, a=beta / (alpha + beta), b=alpha / (alpha + beta))


def _chinchilla_minimize(starts: Sequence[np.ndarray], log_n, log_d, log_y, delta) -> tuple[np.ndarray, float]:
  best_x, best_f = None, math.inf
  for p0 in starts:
    res = optimize.minimize(_chinchilla_objective, p0, args=(log_n, log_d, log_y, delta), jac=True,
                            method='L-BFGS-B', options=dict(ftol=1e-15, gtol=1e-10, maxiter=5000))
    if np.isfinite(res.fun) and res.fun < best_f:
      best_x, best_f = res.x, float(res.fun)
  if best_x is None:
    raise errors.ConfigError('chinchilla fit did not converge from any start')
  return best_x, best_f


def fit_chinchilla(n: np.ndarray, d: np.ndarray, y: np.ndarray, n_bootstrap: int = 100, seed: int = 0,
                   delta: float = HUBER_DELTA, n_starts: int = 8) -> dict[str, Any]:
  """Fits L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. approach 3, Epoch's replication).

  The Huber objective is evaluated on the whole 4500-point Hoffmann grid at once and L-BFGS-B runs from
  the `n_starts` best grid points (on the Chinchilla data the best of 8 and of 128 starts agree to 4
  digits). The optimiser works with log N and log D centred on their means (a_c = a - alpha mean log N,
  likewise b): the same objective, but without the near-degenerate a/alpha valley that otherwise stops
  L-BFGS-B early. Bootstrap refits start from the full-data optimum. `a`, `b` are the compute-optimal
  allocation exponents N_opt ~ C^a, D_opt ~ C^b.
  """
  n, d, y = (np.asarray(v, float) for v in (n, d, y))
  _require_points(n.size, 5, 'chinchilla')
  if np.ptp(n) == 0 or np.ptp(d) == 0:
    raise errors.ConfigError('chinchilla law needs at least two distinct params and two distinct tokens values')
  mu_n, mu_d = float(np.log(n).mean()), float(np.log(d).mean())
  log_n, log_d, log_y = np.log(n) - mu_n, np.log(d) - mu_d, np.log(y)
  starts = np.array(list(itertools.product(*CHINCHILLA_GRID)))
  starts[:, 0] -= starts[:, 3] * mu_n
  starts[:, 1] -= starts[:, 4] * mu_d
  order = np.argsort(_chinchilla_grid_losses(starts, log_n, log_d, log_y, delta))
  best, huber = _chinchilla_minimize(starts[order[:n_starts]], log_n, log_d, log_y, delta)
  out = _chinchilla_params(best, mu_n, mu_d)
  out['huber'] = huber

  def refit(i):
    return _chinchilla_params(_chinchilla_minimize([best], log_n[i], log_d[i], log_y[i], delta)[0], mu_n, mu_d)

  out.update(_bootstrap(refit, n.size, n_bootstrap, seed))
  out['n_points'] = int(n.size)
  return out


def predict_chinchilla(fit: Mapping[str, float], n: np.ndarray, d: np.ndarray) -> np.ndarray:
  return fit['E'] + fit['A'] / np.asarray(n, float) ** fit['alpha'] + fit['B'] / np.asarray(d, float) ** fit['beta']


# ---------------------------------------------------------------------------------------------------
# IsoFLOP.
# ---------------------------------------------------------------------------------------------------


def group_budgets(c: np.ndarray, rtol: float = 0.05) -> np.ndarray:
  """Labels runs whose compute agrees within `rtol` (relative, in sorted order) with one budget index."""
  order = np.argsort(c)
  labels = np.empty(c.size, int)
  label, anchor = 0, None
  for i in order:
    if anchor is not None and c[i] > anchor * (1 + rtol):
      label += 1
      anchor = None
    anchor = c[i] if anchor is None else anchor
    labels[i] = label
  return labels


def _parabola(log_x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float, float]:
  """Least-squares parabola y = q2 log_x^2 + q1 log_x + q0: ((q2, q1, q0), argmin, min)."""
  if np.unique(log_x).size < 3:
    raise errors.ConfigError('fewer than 3 distinct sizes')
  q = np.polyfit(log_x, y, 2)
  if q[0] <= 0:
    raise errors.ConfigError('the parabola opens downwards (no minimum)')
  x_min = -q[1] / (2 * q[0])
  return q, float(x_min), float(np.polyval(q, x_min))


def _isoflop_once(c, log_n, log_d, y, labels) -> tuple[dict[str, float], list[dict], list[dict]]:
  """(allocation laws, per-budget minima, skipped budgets with the reason)."""
  budgets, skipped = [], []
  for k in np.unique(labels):
    sel = labels == k
    budget = float(np.exp(np.log(c[sel]).mean()))
    try:
      q, log_n_opt, loss_opt = _parabola(log_n[sel], y[sel])
      log_d_opt = _parabola(log_d[sel], y[sel])[1] if log_d is not None else None
    except ValueError as e:
      skipped.append(dict(flops=budget, reason=str(e)))
      continue
    n_opt = math.exp(log_n_opt)
    d_opt = math.exp(log_d_opt) if log_d_opt is not None else budget / (6 * n_opt)
    budgets.append(dict(flops=budget, n_opt=n_opt, d_opt=d_opt, loss_opt=loss_opt, n_runs=int(sel.sum()),
                        parabola_log_n=q.tolist()))
  if len(budgets) < 2:
    reasons = '; '.join(sorted({s['reason'] for s in skipped}))
    raise errors.ConfigError(f'isoflop needs at least 2 compute budgets with a convex parabola over >= 3 sizes, '
                     f'got {len(budgets)} ({len(skipped)} budgets skipped: {reasons})')
  cs = np.log([b['flops'] for b in budgets])
  out = {}
  for name, key in (('n', 'n_opt'), ('d', 'd_opt')):
    slope, intercept = np.polyfit(cs, np.log([b[key] for b in budgets]), 1)
    out[f'{name}_exponent'] = float(slope)  # N_opt = k C^a with a = n_exponent; likewise D
    out[f'{name}_coefficient'] = float(np.exp(intercept))
  return out, budgets, skipped


def fit_isoflop(c: np.ndarray, n: np.ndarray, y: np.ndarray, d: Optional[np.ndarray] = None,
                n_bootstrap: int = 1000, seed: int = 0, rtol: float = 0.05) -> dict[str, Any]:
  """IsoFLOP analysis (Hoffmann et al. approach 2, as in Marin's isoflop_analysis).

  Runs are grouped into compute budgets (equal `c` within `rtol`); each budget with >= 3 sizes gets a
  parabola of loss in log N (and in log D if `d` is given; otherwise D_opt = C / 6 N_opt), and the
  minima are fitted with N_opt = n_coefficient C^n_exponent and D_opt = d_coefficient C^d_exponent.
  Bootstrap resamples runs within each budget.
  """
  c, n, y = (np.asarray(v, float) for v in (c, n, y))
  log_d = None if d is None else np.log(np.asarray(d, float))
  labels = group_budgets(c, rtol)
  _require_points(int(np.unique(labels).size), 2, 'isoflop (budgets)')
  log_n = np.log(n)
  out, budgets, skipped = _isoflop_once(c, log_n, log_d, y, labels)
  out.update(budgets=budgets, skipped_budgets=skipped)

  def refit(i):
    return _isoflop_once(c[i], log_n[i], None if log_d is None else log_d[i], y[i], labels[i])[0]

  out.update(_bootstrap(refit, c.size, n_bootstrap, seed, strata=labels))
  out['n_points'] = int(c.size)
  return out


# ---------------------------------------------------------------------------------------------------
# Compute frontier.
# ---------------------------------------------------------------------------------------------------


def pareto_frontier(c: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Indices (by increasing compute) of points that no cheaper-or-equal point beats in loss."""
  order = np.lexsort((y, c))
  keep, best = [], math.inf
  for i in order:
    if y[i] < best:
      keep.append(i)
      best = y[i]
  return np.array(keep, int)


def fit_frontier(c: np.ndarray, y: np.ndarray, n_bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
  """Power law L = (beta C)^alpha fitted to the Pareto frontier of loss against compute."""
  c, y = np.asarray(c, float), np.asarray(y, float)
  idx = pareto_frontier(c, y)
  out = dict(flops=c[idx].tolist(), loss=y[idx].tolist())
  if idx.size >= 2:
    out.update(fit_power(c[idx], y[idx], n_bootstrap, seed))
  return out


# ---------------------------------------------------------------------------------------------------
# One entry point for the CLI and the report.
# ---------------------------------------------------------------------------------------------------


def with_tokens_from_flops(table: Mapping[str, Sequence[Any]]) -> dict[str, Sequence[Any]]:
  """A copy of `table` with tokens = flops / (6 params), Chinchilla's convention."""
  missing = [c for c in ('params', 'flops') if c not in table]
  if missing:
    raise errors.ConfigError(f'tokens from flops needs columns {missing}; the table has {sorted(table)}')
  ps, fs = (np.array([_to_float(v) for v in table[k]]) for k in ('params', 'flops'))
  return dict(table, tokens=list(fs / (6 * ps)))


def fit_table(table: Mapping[str, Sequence[Any]], law: str, x: str = 'params', y: str = 'loss',
              n_bootstrap: Optional[int] = None, seed: int = 0, tokens_from_flops: bool = False,
              drop_highest: int = 0) -> dict[str, Any]:
  """Fits `law` to a results table; adds the compute frontier when the table has `flops`.

  tokens_from_flops: D = C / (6 N) (Chinchilla's convention) instead of a `tokens` column.
  drop_highest: leave out the k highest-loss points (Epoch drops 5 from Chinchilla's Figure 4).
  """
  if law not in LAWS:
    raise errors.ConfigError(f'--law must be one of {LAWS}, got {law!r}')
  if law == 'power' and x not in X_COLUMNS:
    raise errors.ConfigError(f'--x must be one of {X_COLUMNS}, got {x!r}')
  table = with_tokens_from_flops(table) if tokens_from_flops else dict(table)
  columns = {'power': [x, y], 'chinchilla': ['params', 'tokens', y],
             'isoflop': ['flops', 'params'] + (['tokens'] if 'tokens' in table else []) + [y]}[law]
  cols = usable_columns(table, columns)
  if drop_highest:
    keep = np.sort(np.argsort(cols[y], kind='stable')[:max(cols[y].size - drop_highest, 0)])
    cols = {k: v[keep] for k, v in cols.items()}
  if n_bootstrap is None:
    n_bootstrap = 100 if law == 'chinchilla' else 1000
  start = time.perf_counter()
  if law == 'power':
    out = fit_power(cols[x], cols[y], n_bootstrap, seed)
  elif law == 'chinchilla':
    out = fit_chinchilla(cols['params'], cols['tokens'], cols[y], n_bootstrap, seed)
  else:
    out = fit_isoflop(cols['flops'], cols['params'], cols[y], cols.get('tokens'), n_bootstrap, seed)
  out = dict(law=law, x=x if law == 'power' else None, y=y, n_bootstrap=n_bootstrap, **out,
             seconds=time.perf_counter() - start, run_ids=[str(r) for r in cols['run_id']])
  if 'flops' in table:
    if 'flops' not in cols:
      with warnings.catch_warnings():
        warnings.simplefilter('ignore', DroppedRunsWarning)  # the same runs were reported above
        cols = usable_columns(table, ['flops', y])
    out['frontier'] = fit_frontier(cols['flops'], cols[y], n_bootstrap, seed)
  return out




if __name__ == '__main__':  # a library: say which command to run instead of doing nothing
  print('var-fit: error: var_jax.scaling.fit is a library; run `python -m var_jax.fit --input=... --out=...`',
        file=sys.stderr)
  sys.exit(errors.ConfigError.exit_code)
