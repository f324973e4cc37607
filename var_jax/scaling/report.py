"""ROOT/report/: a Markdown scaling report (runs table, fitted laws with 95% intervals, plots) and fit JSONs.

Written by `python -m var_jax.sweep` after aggregation. Laws that the runs cannot support (too few
finished runs, a single token budget for Chinchilla, ...) are listed with the reason instead. Every metric
column the table has beyond the loss (the generation-quality columns, `runs.QUALITY_COLUMNS`, of evaluated
runs) gets the same power laws against parameters and training compute, and a plot for each.
"""
import json
import math
import os
import warnings
from typing import Any, Mapping, Sequence

import numpy as np

from var_jax.scaling import fit as fit_lib
from var_jax.scaling import plots
from var_jax.scaling import runs as runs_lib

SI_PREFIXES = 'kMGTPEZY'
TABLE_COLUMNS = ('run_id', 'depth', 'width', 'params', 'tokens', 'flops', 'loss', 'loss_last_scale', 'acc',
                 'acc_last_scale', 'status')


def _fmt(value: Any) -> str:
  """Numbers for a table: 4 significant digits, SI prefixes from 10^4 (4.87M params, 209G FLOPs)."""
  try:
    v = float(value)
  except (TypeError, ValueError):
    return str(value)
  if not math.isfinite(v) or v == 0:
    return str(value)
  exponent = int(math.floor(math.log10(abs(v)) / 3)) if abs(v) >= 1e4 else 0
  if 0 < exponent <= len(SI_PREFIXES):
    return f'{v / 10 ** (3 * exponent):.3g}{SI_PREFIXES[exponent - 1]}'
  return f'{v:.4g}'


def _ci(result: Mapping[str, Any], key: str) -> str:
  lo, hi = result.get(f'{key}_ci', [math.nan, math.nan])
  return f'{_fmt(result[key])} [{_fmt(lo)}, {_fmt(hi)}]'


def eval_curves(root: str, rows: Sequence[Mapping[str, Any]], y: str) -> list[dict[str, Any]]:
  """Eval points (flops_seen, y) of every run from its metrics.jsonl, labelled by model size."""
  curves = []
  for row in rows:
    records = [r for r in runs_lib.read_metrics(os.path.join(root, row['run_id']), 'eval')
               if r.get('flops_seen') and np.isfinite(r.get(y, np.nan))]
    if records:
      params = float(row['params'])
      curves.append(dict(label=f"d{row['depth']} ({params / 1e6:.3g}M)", params=params,
                         flops=np.array([r['flops_seen'] for r in records], float),
                         loss=np.array([r[y] for r in records], float)))
  return curves


def _try_fit(table, law, notes, **kw):
  """fit_table, with a failure or left-out runs written to `notes` (each distinct note once)."""
  name = law + (f' {kw["y"]} ~ {kw["x"]}' if 'x' in kw else f' {kw["y"]}')
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always', fit_lib.DroppedRunsWarning)
    try:
      result = fit_lib.fit_table(table, law, **kw)
    except ValueError as e:
      notes.append(f'{name}: not fitted: {e}')
      return None
  for w in caught:
    if issubclass(w.category, fit_lib.DroppedRunsWarning) and str(w.message) not in notes:
      notes.append(str(w.message))
  return result


def _power_plot(rows, result, out_dir) -> tuple[np.ndarray, np.ndarray]:
  """OUT/{y}_vs_{x}.png: the runs of a power fit with its law; returns the plotted (x, y)."""
  x_name, y_name = result['x'], result['y']
  ok = set(result['run_ids'])
  sel = [r for r in rows if r['run_id'] in ok]
  x = np.array([float(r[x_name]) for r in sel])
  y = np.array([float(r[y_name]) for r in sel])
  plots.loss_vs_x(x, y, result, os.path.join(out_dir, f'{y_name}_vs_{x_name}.png'), x_name, y_name,
                  [r['run_id'].rsplit('-', 1)[0] for r in sel])
  return x, y


def write_report(root: str, n_bootstrap: int = 200) -> str:
  """Writes ROOT/report/{report.md, fits.json, *.png, *.svg} from ROOT/results.csv; returns report.md."""
  table = fit_lib.load_table(root)
  rows = [dict(zip(table, values)) for values in zip(*table.values())]
  out_dir = os.path.join(root, 'report')
  os.makedirs(out_dir, exist_ok=True)
  notes: list[str] = []
  fits: dict[str, Any] = {}
  figures: list[tuple[str, str]] = []

  quality = [c for c in runs_lib.QUALITY_COLUMNS if c in table and any(table[c])]
  for y in ('loss', 'loss_last_scale', *quality):
    for x in ('params', 'flops'):
      result = _try_fit(table, 'power', notes, x=x, y=y, n_bootstrap=n_bootstrap)
      if result is not None:
        fits[f'power_{x}_{y}'] = result
  for law in ('chinchilla', 'isoflop'):
    result = _try_fit(table, law, notes, y='loss', n_bootstrap=min(n_bootstrap, 100))
    if result is not None:
      fits[law] = result

  curves = eval_curves(root, rows, 'loss')
  frontier = None
  if curves:
    all_flops = np.concatenate([c['flops'] for c in curves])
    all_loss = np.concatenate([c['loss'] for c in curves])
    frontier = fit_lib.fit_frontier(all_flops, all_loss, n_bootstrap)
    fits['frontier_eval_points'] = frontier
    plots.loss_vs_compute(curves, os.path.join(out_dir, 'loss_vs_compute.png'), 'loss', frontier)
    figures.append(('Eval loss against training compute (every eval point; frontier and its law in red)',
                    'loss_vs_compute.png'))
  power = fits.get('power_params_loss')
  if power is not None:
    x, loss = _power_plot(rows, power, out_dir)
    plots.residuals(x, loss, fit_lib.predict_power(power, x), os.path.join(out_dir, 'residuals_params.png'),
                    'params', 'residuals of L = (beta N)^alpha')
    figures += [('Final eval loss against parameters', 'loss_vs_params.png'),
                ('Residuals of the parameter law', 'residuals_params.png')]
  for y in quality:
    for x in ('flops', 'params'):
      if f'power_{x}_{y}' in fits:
        _power_plot(rows, fits[f'power_{x}_{y}'], out_dir)
        figures.append((f'{y} against {plots.LABELS[x]} (generation quality)', f'{y}_vs_{x}.png'))
  for law in ('chinchilla', 'isoflop'):
    if law in fits:
      plots.fit_figure(table, fits[law], os.path.join(out_dir, f'{law}.png'))
      figures.append((f'{law} fit', f'{law}.png'))

  with open(os.path.join(out_dir, 'fits.json'), 'w') as f:
    json.dump(fits, f, indent=1)
  path = os.path.join(out_dir, 'report.md')
  with open(path, 'w') as f:
    f.write(_markdown(root, rows, fits, notes, figures))
  return path


def _markdown(root, rows, fits, notes, figures) -> str:
  columns = TABLE_COLUMNS + tuple(c for c in runs_lib.QUALITY_COLUMNS if any(r.get(c) for r in rows))
  lines = [f'# Scaling report: {os.path.basename(os.path.abspath(root))}', '',
           f'{len(rows)} runs; ' + ', '.join(f'{sum(r["status"] == s for r in rows)} {s}'
                                              for s in runs_lib.STATUSES if any(r['status'] == s for r in rows)),
           '', '## Runs', '', '| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
  lines += ['| ' + ' | '.join(_fmt(r.get(c, '')) for c in columns) + ' |' for r in rows]
  lines += ['', '## Fitted laws (95% bootstrap intervals)', '']
  power = [(k, v) for k, v in fits.items() if k.startswith('power_')]
  if power:
    lines += ['| law | y | x | alpha | beta | Pearson r (log-log) | runs |', '|---|---|---|---|---|---|---|']
    for _, r in power:
      lines.append(f"| L = (beta X)^alpha | {r['y']} | {r['x']} | {_ci(r, 'alpha')} | {_ci(r, 'beta')} | "
                   f"{_fmt(r['r'])} | {r['n_points']} |")
  frontier = fits.get('frontier_eval_points')
  if frontier and 'alpha' in frontier:
    lines += ['', f"Compute frontier (Pareto-optimal eval points, {frontier['n_points']}): "
              f"L = (beta C)^alpha with alpha = {_ci(frontier, 'alpha')}, beta = {_ci(frontier, 'beta')}, "
              f"r = {_fmt(frontier['r'])}."]
  if 'chinchilla' in fits:
    c = fits['chinchilla']
    lines += ['', 'L(N, D) = E + A / N^alpha + B / D^beta: ' + ', '.join(
        f'{k} = {_ci(c, k)}' for k in ('E', 'A', 'B', 'alpha', 'beta', 'a', 'b')) + '.']
  if 'isoflop' in fits:
    c = fits['isoflop']
    lines += ['', f"IsoFLOP: N_opt ~ C^{_ci(c, 'n_exponent')}, D_opt ~ C^{_ci(c, 'd_exponent')} "
              f"({len(c['budgets'])} budgets)."]
  if notes:
    lines += ['', '### Notes', ''] + [f'- {n}' for n in notes]
  lines += ['', '## Plots', '']
  for caption, name in figures:
    lines += [f'![{caption}]({name})', '', f'*{caption}* ([SVG]({os.path.splitext(name)[0]}.svg))', '']
  return '\n'.join(lines) + '\n'
