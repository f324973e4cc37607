"""Scaling plots (matplotlib, Agg backend), each written as PNG and SVG side by side.

  loss_vs_compute  eval loss against training FLOPs, one curve per run coloured by model size, with the
                   Pareto frontier of all eval points and the power law fitted to it
  loss_vs_x        final loss against params (or flops / tokens) with the fitted power law and its r
  residuals        log(observed / fitted) of a fit
  fit_figure       the figure `python -m var_jax.fit --plot` draws for any law
"""
import os
import warnings
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

from var_jax.scaling import fit as fit_lib  # noqa: E402

LABELS = dict(params='parameters', flops='training FLOPs', tokens='training tokens')


def save(fig, path: str) -> list[str]:
  """Writes `fig` to path's stem + .png and + .svg; returns both paths."""
  stem = os.path.splitext(path)[0]
  os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
  paths = [stem + '.png', stem + '.svg']
  for p in paths:
    fig.savefig(p, dpi=150, bbox_inches='tight')
  plt.close(fig)
  return paths


def _finish(ax, **labels) -> None:
  """Log-log axes with plain-number loss ticks (2.5, not 2.5 x 10^0), a grid and a legend."""
  ax.set(xscale='log', yscale='log', **labels)
  plain = matplotlib.ticker.FuncFormatter(lambda v, _: f'{v:g}')
  ax.yaxis.set_major_formatter(plain)
  ax.yaxis.set_minor_formatter(plain)
  ax.tick_params(axis='y', which='minor', labelsize=7)
  ax.grid(True, which='both', alpha=0.3)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=7)


def _law_text(result: Mapping[str, Any], x: str) -> str:
  text = f"L = ({result['beta']:.3g} {x})^{result['alpha']:.3f}"
  if 'alpha_ci' in result:
    text += f"  (alpha 95% CI [{result['alpha_ci'][0]:.3f}, {result['alpha_ci'][1]:.3f}])"
  if np.isfinite(result.get('r', np.nan)):
    text += f"\nPearson r = {result['r']:.4f}"
  return text


def _span(values: np.ndarray, pad: float = 1.3) -> np.ndarray:
  return np.geomspace(values.min() / pad, values.max() * pad, 100)


def loss_vs_compute(curves: Sequence[Mapping[str, Any]], path: str, y: str = 'loss',
                    frontier: Mapping[str, Any] | None = None) -> list[str]:
  """curves: dicts with `label`, `params`, `flops` and `loss` arrays (eval points of one run).

  frontier: `fit.fit_frontier` over the plotted points (drawn with its law when it has one).
  """
  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  sizes = np.log([c['params'] for c in curves]) if curves else np.zeros(0)
  span = np.ptp(sizes) if sizes.size else 0
  cmap = plt.get_cmap('viridis')
  labelled = set()
  for curve, size in zip(curves, sizes):
    colour = cmap(0.9 * (size - sizes.min()) / span if span else 0.5)
    label = None if curve['label'] in labelled else curve['label']
    labelled.add(curve['label'])
    ax.plot(curve['flops'], curve['loss'], '-o', ms=3, lw=1.2, color=colour, label=label)
  if frontier is not None and frontier.get('flops'):
    fx = np.asarray(frontier['flops'])
    ax.plot(fx, frontier['loss'], 's', mfc='none', mec='crimson', ms=7, label='Pareto frontier')
    if 'alpha' in frontier:
      xs = _span(fx)
      ax.plot(xs, fit_lib.predict_power(frontier, xs), '--', color='crimson',
              label=_law_text(frontier, 'C'))
  _finish(ax, xlabel='training FLOPs', ylabel=f'eval {y}', title=f'{y} against compute')
  return save(fig, path)


def loss_vs_x(x: np.ndarray, loss: np.ndarray, result: Mapping[str, Any], path: str, x_name: str = 'params',
              y: str = 'loss', labels: Sequence[str] | None = None) -> list[str]:
  """Final losses against x with the fitted power law `result` (fit.fit_power) and its r."""
  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  ax.plot(x, loss, 'o', color='tab:blue', label='runs')
  for xi, li, name in zip(x, loss, labels or []):
    ax.annotate(name, (xi, li), fontsize=6, xytext=(3, 3), textcoords='offset points')
  xs = _span(np.asarray(x, float))
  symbol = {'params': 'N', 'flops': 'C', 'tokens': 'D'}.get(x_name, x_name)
  ax.plot(xs, fit_lib.predict_power(result, xs), '--', color='tab:red', label=_law_text(result, symbol))
  _finish(ax, xlabel=LABELS.get(x_name, x_name), ylabel=y, title=f'{y} against {x_name}')
  return save(fig, path)


def residuals(x: np.ndarray, observed: np.ndarray, predicted: np.ndarray, path: str, x_name: str = 'params',
              title: str = 'fit residuals') -> list[str]:
  """log(observed / predicted) against x."""
  fig, ax = plt.subplots(figsize=(6.4, 3.2))
  ax.axhline(0, color='grey', lw=1)
  ax.plot(x, np.log(np.asarray(observed) / np.asarray(predicted)), 'o', color='tab:purple')
  ax.set(xscale='log', xlabel=LABELS.get(x_name, x_name), ylabel='log(observed / fitted)', title=title)
  ax.grid(True, which='both', alpha=0.3)
  return save(fig, path)


def _isoflop_figure(cols: Mapping[str, np.ndarray], result: Mapping[str, Any], path: str, y: str) -> list[str]:
  fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 4))
  labels = fit_lib.group_budgets(cols['flops'])
  cmap = plt.get_cmap('plasma')
  for k in np.unique(labels):
    sel = labels == k
    ax0.plot(cols['params'][sel], cols[y][sel], 'o', color=cmap(k / max(labels.max(), 1) * 0.85),
             label=f'C = {np.exp(np.log(cols["flops"][sel]).mean()):.2g}')
  for b in result['budgets']:
    near = np.isclose(cols['flops'], b['flops'], rtol=0.1)  # the budget's runs (grouped within 5%)
    if near.any():
      ns = _span(cols['params'][near], pad=1.0)
      ax0.plot(ns, np.polyval(b['parabola_log_n'], np.log(ns)), '-', color='grey', lw=0.8)
    ax0.plot(b['n_opt'], b['loss_opt'], 'k*', ms=9)
  _finish(ax0, xlabel='parameters', ylabel=y, title='IsoFLOP profiles (* = fitted minimum)')
  cs = np.array([b['flops'] for b in result['budgets']])
  xs = _span(cs)
  for key, name, colour in (('n', 'N_opt', 'tab:blue'), ('d', 'D_opt', 'tab:green')):
    ax1.plot(cs, [b[f'{key}_opt'] for b in result['budgets']], 'o', color=colour)
    ax1.plot(xs, result[f'{key}_coefficient'] * xs ** result[f'{key}_exponent'], '--', color=colour,
             label=f"{name} ~ C^{result[f'{key}_exponent']:.3f}")
  ax1.set(xscale='log', yscale='log', xlabel='training FLOPs', title='compute-optimal allocation')
  ax1.legend(fontsize=7)
  ax1.grid(True, which='both', alpha=0.3)
  return save(fig, path)


def fit_figure(table: Mapping[str, Sequence[Any]], result: Mapping[str, Any], path: str) -> list[str]:
  """The figure for a `fit.fit_table` result: data, law and residuals (the isoflop law: its profiles)."""
  law, y = result['law'], result['y']
  keep = set(result['run_ids'])
  columns = {'power': [result['x'], y], 'chinchilla': ['params', 'tokens', y],
             'isoflop': ['flops', 'params', y]}[law]
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', fit_lib.DroppedRunsWarning)  # the fit itself reported them
    cols = fit_lib.usable_columns(table, columns)
  sel = np.array([str(r) in keep for r in cols['run_id']])
  cols = {k: v[sel] for k, v in cols.items()}
  if law == 'isoflop':
    return _isoflop_figure(cols, result, path, y)
  if law == 'power':
    x_name, x = result['x'], cols[result['x']]
    predicted = fit_lib.predict_power(result, x)
  else:
    x_name, x = 'params', cols['params']
    predicted = fit_lib.predict_chinchilla(result, cols['params'], cols['tokens'])
  fig, (ax0, ax1) = plt.subplots(2, 1, figsize=(6.4, 6.4), sharex=True, gridspec_kw=dict(height_ratios=(2, 1)))
  if law == 'power':
    ax0.plot(x, cols[y], 'o', label='runs')
    xs = _span(x)
    ax0.plot(xs, fit_lib.predict_power(result, xs), '--', color='tab:red', label=_law_text(result, x_name))
  else:
    order = np.argsort(x)
    scatter = ax0.scatter(x, cols[y], c=np.log10(cols['tokens']), s=12, cmap='viridis', label='runs')
    ax0.plot(x[order], predicted[order], '.', color='tab:red', ms=3,
             label=(f"E + A/N^a + B/D^b: E={result['E']:.3f}, A={result['A']:.3g}, B={result['B']:.3g},\n"
                    f"alpha={result['alpha']:.3f}, beta={result['beta']:.3f}"))
    fig.colorbar(scatter, ax=ax0, label='log10 tokens')
  _finish(ax0, ylabel=y, title=f'{law} fit ({result["n_points"]} runs)')
  ax1.axhline(0, color='grey', lw=1)
  ax1.plot(x, np.log(cols[y] / predicted), 'o', ms=3, color='tab:purple')
  ax1.set(xscale='log', xlabel=LABELS.get(x_name, x_name), ylabel='log(observed / fitted)')
  ax1.grid(True, which='both', alpha=0.3)
  return save(fig, path)
