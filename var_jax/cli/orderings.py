"""`python -m var_jax.orderings --root=ROOT`: the next-scale and next-token sweeps side by side.

  python -m var_jax.sweep --config=experiments/orderings_shapes.py:next_scale --workdir=ROOT/next_scale
  python -m var_jax.sweep --config=experiments/orderings_shapes.py:raster --workdir=ROOT/raster
  python -m var_jax.orderings --root=ROOT        # -> ROOT/orderings.md, ROOT/orderings.png

See `var_jax.scaling.orderings` for what the table holds and what it does not show.
"""
from __future__ import annotations

from typing import Sequence

from absl import flags

from var_jax import cli
from var_jax import errors

PROG = 'var-orderings'


def _define_flags() -> None:
  flags.DEFINE_string('root', None, 'Folder holding the next_scale/ and raster/ sweep roots.')
  flags.DEFINE_bool('time_sampling', True, 'Time each run\'s sampler (loads its checkpoint).')
  flags.DEFINE_integer('bootstrap', 1000, 'Bootstrap resamples of each power-law fit.')


def main(argv: Sequence[str]) -> None:
  cli.no_positional(argv)
  f = flags.FLAGS
  if not f.root:
    raise errors.ConfigError('--root is required')
  from var_jax.scaling import orderings  # pylint: disable=g-import-not-at-top
  path = orderings.write(f.root, time_sampling=f.time_sampling, n_bootstrap=f.bootstrap)
  print(open(path).read())
  print(f'wrote {path}')


def run() -> None:
  _define_flags()
  cli.run(main, prog=PROG)

