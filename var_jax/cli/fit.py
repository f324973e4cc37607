"""`python -m var_jax.fit`: fit a scaling law to a results table and write it as JSON (and a figure).

  python -m var_jax.fit --input results.csv|ROOT --law power|chinchilla|isoflop [--x params|flops|tokens]
      [--y loss] --out fit.json [--plot FIG.png]

The laws are `var_jax.scaling.fit`'s; `--plot` draws `var_jax.scaling.plots.fit_figure`.
"""
from __future__ import annotations

import json
import os

from absl import flags

from var_jax import cli
from var_jax import errors
from var_jax.scaling import fit

PROG = 'var-fit'


def _define_flags() -> None:
  flags.DEFINE_string('input', None, 'results.csv, or a sweep ROOT holding results.csv')
  flags.DEFINE_enum('law', 'power', fit.LAWS, 'law to fit')
  flags.DEFINE_enum('x', 'params', fit.X_COLUMNS, 'x column of the power law')
  flags.DEFINE_string('y', 'loss', 'loss column (e.g. loss_last_scale)')
  flags.DEFINE_string('out', None, 'fit.json to write')
  flags.DEFINE_string('plot', None, 'also draw the fit to this PNG (an SVG is written beside it)')
  flags.DEFINE_integer('bootstrap', None, 'bootstrap resamples (default 100 for chinchilla, else 1000)')
  flags.DEFINE_integer('seed', 0, 'bootstrap seed')
  flags.DEFINE_list('rename', [], 'column renames NAME=CSV_COLUMN, e.g. "params=Model Size,flops=Training FLOP"')
  flags.DEFINE_bool('tokens_from_flops', False, 'tokens = flops / (6 params), as in Chinchilla')
  flags.DEFINE_integer('drop_highest', 0, 'leave out this many highest-loss points')


def main(argv) -> None:
  cli.no_positional(argv)
  f = flags.FLAGS
  if not f.input or not f.out:
    raise errors.ConfigError('--input and --out are required')
  bad = [kv for kv in f.rename if '=' not in kv]
  if bad:
    raise errors.ConfigError(f'--rename: expected NAME=CSV_COLUMN, got {bad[0]!r}')
  rename = dict(kv.split('=', 1) for kv in f.rename)
  table = fit.load_table(f.input, {v: k for k, v in rename.items()})
  if f.tokens_from_flops:
    table = fit.with_tokens_from_flops(table)
  result = fit.fit_table(table, f.law, f.x, f.y, f.bootstrap, f.seed, drop_highest=f.drop_highest)
  os.makedirs(os.path.dirname(os.path.abspath(f.out)), exist_ok=True)
  with open(f.out, 'w') as fh:
    json.dump(result, fh, indent=2)
  summary = {k: result[k] for k in ('E', 'A', 'B', 'alpha', 'beta', 'r', 'a', 'b', 'n_exponent', 'd_exponent')
             if k in result}
  print(json.dumps(dict(law=f.law, n_points=result['n_points'], seconds=round(result['seconds'], 2), **summary)))
  if f.plot:
    from var_jax.scaling import plots  # pylint: disable=g-import-not-at-top  # matplotlib only for a figure
    plots.fit_figure(table, result, f.plot)


def run() -> None:
  _define_flags()
  cli.run(main, prog=PROG)

