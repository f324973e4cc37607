"""Next-scale, next-token and masked decoding: the orderings' sweeps side by side (`python -m var_jax.orderings`).

Reads ROOT/next_scale, ROOT/raster and ROOT/masked, each a sweep root (var_jax.scaling.sweep) of the same
data, steps and depths (experiments/orderings_*.py, experiments/maskgit_shapes.py), at least two of them,
and writes ROOT/orderings.md (one table) and ROOT/orderings.png (one figure). Per finished run: parameters,
training FLOPs, the transformer's sampling FLOPs per image
(`flops.sample_flops_per_image`, with CFG), the measured sampling wall time per image (the run's last
checkpoint through the generator and the sampling driver, after one warm-up batch), and its own eval loss and token
accuracy; per ordering, the power law of eval loss against training FLOPs with its bootstrap interval.

The two losses predict different token sequences (30 tokens of 4 scales against 16 raster tokens of one
map, from different tokenizers) and are not compared with each other: each ordering's exponent says how
its own loss falls with compute. Comparing quality needs a measure on the images (FD from
var_jax.eval, sample accuracy from the shapes classifier): `quality` columns here are left for those.
"""
from __future__ import annotations

import os
import time
from typing import Any, Sequence

import numpy as np

from var_jax import errors
from var_jax import flops
from var_jax.generate import generator
from var_jax.scaling import fit
from var_jax.train import rundir as rundir_lib

ORDERS = (('next_scale', 'var'), ('raster', 'next_token'), ('masked', 'maskgit'))  # (order, task)
MIN_ORDERS = 2
COLUMNS = ('order', 'run_id', 'depth', 'params', 'train_flops', 'sample_flops', 'sample_s_per_image', 'loss',
           'acc')


def sampling_seconds(run_dir: str, *, batch: int = 16, repeats: int = 2, seed: int = 0) -> float:
  """Wall seconds per image of a run's sampler (cfg 1.5, top-k 0) through the sampling driver, median of
  `repeats` batches after a warm-up batch that compiles."""
  gen = generator.from_run(run_dir)
  driver, knobs = gen.driver(batch), gen.knobs(cfg=1.5, top_k=0, top_p=0.0)
  labels = np.arange(batch) % gen.num_classes
  times = []
  for i in range(repeats + 1):
    t0 = time.perf_counter()
    driver.draw(labels, np.arange(batch), seed + i, **knobs)
    times.append(time.perf_counter() - t0)
  return float(np.median(times[1:])) / batch


def rows(root: str, *, time_sampling: bool = True) -> list[dict[str, Any]]:
  """One row per finished run of the orderings whose sweep tables are present (COLUMNS), at least MIN_ORDERS."""
  tables = {order: os.path.join(root, order, 'results.csv') for order, _ in ORDERS}
  present = [(order, task) for order, task in ORDERS if os.path.exists(tables[order])]  # before any work
  if len(present) < MIN_ORDERS:
    order = next(o for o, _ in ORDERS if (o, dict(ORDERS)[o]) not in present)
    raise errors.DataError(f'{tables[order]}: missing; run the {order} sweep first (experiments/orderings_*.py, '
                           f'experiments/maskgit_shapes.py): the comparison needs at least {MIN_ORDERS} orderings')
  out = []
  for order, task in present:
    table = fit.load_table(os.path.join(root, order, 'results.csv'))
    for i, run_id in enumerate(table['run_id']):
      if table['status'][i] not in fit.OK_STATUSES:
        continue
      run_dir = os.path.join(root, order, run_id)
      model = (rundir_lib.RunDir(run_dir).config_json() or {}).get('model', {})
      kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in model.items()}
      out.append(dict(
          order=order, run_id=run_id, depth=int(table['depth'][i]), params=int(table['params'][i]),
          train_flops=float(table['flops'][i]), sample_flops=flops.sample_flops_per_image(kwargs, order),
          sample_s_per_image=sampling_seconds(run_dir) if time_sampling else float('nan'),
          loss=float(table['loss'][i]), acc=float(table['acc'][i])))
  return out


def exponents(table: Sequence[dict[str, Any]], n_bootstrap: int = 1000) -> dict[str, dict[str, Any]]:
  """Per ordering: the power law loss = (beta flops)^alpha with 95% bootstrap intervals (fit.fit_power)."""
  out = {}
  for order, _ in ORDERS:
    mine = [r for r in table if r['order'] == order]
    if len(mine) >= 3:
      out[order] = fit.fit_power(np.array([r['train_flops'] for r in mine]),
                                 np.array([r['loss'] for r in mine]), n_bootstrap=n_bootstrap)
  return out


def markdown(table: Sequence[dict[str, Any]], laws: dict[str, dict[str, Any]]) -> str:
  lines = ['| ' + ' | '.join(COLUMNS) + ' |', '|' + '---|' * len(COLUMNS)]
  fmt = lambda v: f'{v:.4g}' if isinstance(v, float) else str(v)
  lines += ['| ' + ' | '.join(fmt(r[c]) for c in COLUMNS) + ' |' for r in table]
  lines += ['', '| order | alpha (loss vs training FLOPs) | 95% interval |', '|---|---|---|']
  for order, law in laws.items():
    lo, hi = law.get('alpha_ci', (float('nan'), float('nan')))
    lines.append(f'| {order} | {law["alpha"]:.4f} | [{lo:.4f}, {hi:.4f}] |')
  lines += ['', 'Each loss is its own ordering\'s token cross-entropy (different sequences, different '
            'tokenizers): compare exponents and sampling costs, not loss values across orderings.']
  return '\n'.join(lines) + '\n'


def figure(table: Sequence[dict[str, Any]], path: str) -> None:
  """Own loss against training FLOPs, and sampling seconds per image against sampling FLOPs."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
  for order, _ in ORDERS:
    mine = [r for r in table if r['order'] == order]
    if not mine:
      continue
    ax1.loglog([r['train_flops'] for r in mine], [r['loss'] for r in mine], 'o-', label=order)
    ax2.loglog([r['sample_flops'] for r in mine], [r['sample_s_per_image'] for r in mine], 'o-', label=order)
  ax1.set(xlabel='training FLOPs', ylabel='eval loss (own ordering; not comparable across)')
  ax2.set(xlabel='sampling FLOPs per image (CFG)', ylabel='sampling seconds per image')
  for ax in (ax1, ax2):
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write(root: str, *, time_sampling: bool = True, n_bootstrap: int = 1000) -> str:
  """Writes ROOT/orderings.md and ROOT/orderings.png; returns the markdown path."""
  table = rows(root, time_sampling=time_sampling)
  md = os.path.join(root, 'orderings.md')
  with open(md, 'w') as f:
    f.write(markdown(table, exponents(table, n_bootstrap)))
  figure(table, os.path.join(root, 'orderings.png'))
  return md
