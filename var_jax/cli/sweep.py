r"""`python -m var_jax.sweep --config=experiments/SWEEP.py[:ARG] --workdir=ROOT [--launcher=local|print|slurm]`.

Expands the sweep file into runs (ROOT/<run_id>), runs the pending ones (local: one after another;
print: one command per run; slurm: one `sbatch launch/slurm.sbatch` job per run), then writes
ROOT/results.csv and ROOT/report/. Finished runs are skipped, partial ones resume, failed ones are
recorded (rerun them with --retry_failed). `--aggregate_only` (or --aggregate-only) only rewrites the
table and the report. Sweep-file values can be overridden: --config.base.batch_size=64.
See var_jax/scaling/sweep.py for the sweep-file format.
Exit codes: 0 when no run is recorded as failed or diverged, 6 (`errors.RunsFailedError`) naming those that are,
2 for a bad flag, sweep file or key.
"""
from absl import flags
from ml_collections import config_flags

from var_jax import cli
from var_jax import errors
from var_jax.scaling import sweep

PROG = 'var-sweep'
_DASHED = ('aggregate-only', 'noaggregate-only', 'retry-failed', 'noretry-failed', 'sbatch-args')


def _define_flags() -> None:
  config_flags.DEFINE_config_file('config', None, 'Sweep file (get_config returns base/axes/...).')
  flags.DEFINE_string('workdir', None, 'Sweep root: one folder per run, results.csv, report/.')
  flags.DEFINE_enum('launcher', 'local', ['local', 'print', 'slurm'], 'How runs are started.')
  flags.DEFINE_bool('aggregate_only', False, 'Only write results.csv and the report.')
  flags.DEFINE_bool('retry_failed', False, 'Also rerun runs recorded as failed or diverged.')
  flags.DEFINE_string('sbatch_args', '', 'Extra sbatch options, e.g. "--nodes=2 --time=48:00:00".')
  flags.DEFINE_bool('report', True, 'Write ROOT/report/ after aggregating.')


def _dashes_to_underscores(argv: list[str]) -> list[str]:
  """Accepts --aggregate-only / --retry-failed / --sbatch-args spellings for the flags above."""
  out = []
  for arg in argv:
    name = arg[2:].split('=', 1)[0] if arg.startswith('--') else ''
    out.append('--' + arg[2:].replace('-', '_', name.count('-')) if name in _DASHED else arg)
  return out


def main(argv):
  cli.no_positional(argv)
  f = flags.FLAGS
  if not f.workdir:
    raise errors.ConfigError('--workdir is required')
  config = cli.config_file('config', required=not f.aggregate_only)
  try:
    rows = sweep.launch(config, f.workdir, f.launcher, f.aggregate_only, f.retry_failed, f.sbatch_args, f.report)
  except FileNotFoundError as e:
    raise errors.ConfigError(str(e)) from None
  sweep.check_finished(rows)


def run():
  _define_flags()
  cli.run(main, prog=PROG, rewrite_argv=_dashes_to_underscores)

