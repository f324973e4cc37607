r"""`python -m var_jax.sweep --config=experiments/SWEEP.py[:ARG] --workdir=ROOT [--launcher=local|print|slurm]`.

Expands the sweep file into runs (ROOT/<run_id>), runs the pending ones (local: one after another;
print: one command per run; slurm: one `sbatch launch/slurm.sbatch` job per run), then writes
ROOT/results.csv and ROOT/report/. Finished runs are skipped, partial ones resume, failed ones are
recorded (rerun them with --retry_failed). `--aggregate_only` (or --aggregate-only) only rewrites the
table and the report. Sweep-file values can be overridden: --config.base.batch_size=64.
See var_jax/scaling/sweep.py for the sweep-file format.
"""
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from var_jax.scaling import sweep

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Sweep file (get_config returns base/axes/...).', allow_override=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Sweep root: one folder per run, results.csv, report/.', allow_override=True)
_LAUNCHER = flags.DEFINE_enum('launcher', 'local', ['local', 'print', 'slurm'], 'How runs are started.')
_AGGREGATE_ONLY = flags.DEFINE_bool('aggregate_only', False, 'Only write results.csv and the report.')
_RETRY_FAILED = flags.DEFINE_bool('retry_failed', False, 'Also rerun runs recorded as failed or diverged.')
_SBATCH_ARGS = flags.DEFINE_string('sbatch_args', '', 'Extra sbatch options, e.g. "--nodes=2 --time=48:00:00".')
_REPORT = flags.DEFINE_bool('report', True, 'Write ROOT/report/ after aggregating.')


def _dashes_to_underscores(argv):
  """Accepts --aggregate-only / --retry-failed / --sbatch-args spellings for the flags above."""
  names = ('aggregate-only', 'noaggregate-only', 'retry-failed', 'noretry-failed', 'sbatch-args')
  out = []
  for arg in argv:
    name = arg[2:].split('=', 1)[0] if arg.startswith('--') else ''
    out.append('--' + arg[2:].replace('-', '_', name.count('-')) if name in names else arg)
  return out


def _parse(argv):
  try:
    return flags.FLAGS(_dashes_to_underscores(argv))
  except flags.Error as e:
    # A sweep file that raises comes back as a traceback: keep the flag and the exception lines.
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    sys.stderr.write(f'var-sweep: error: {" ".join(lines[:1] + lines[1:][-1:])}\n')
    sys.exit(2)


def main(argv):
  if len(argv) > 1:
    sys.stderr.write(f'var-sweep: error: unexpected arguments {argv[1:]}\n')
    sys.exit(2)
  if not _WORKDIR.value:
    sys.stderr.write('var-sweep: error: --workdir is required\n')
    sys.exit(2)
  try:
    sweep.launch(_CONFIG.value, _WORKDIR.value, _LAUNCHER.value, _AGGREGATE_ONLY.value, _RETRY_FAILED.value,
                 _SBATCH_ARGS.value, _REPORT.value)
  except (ValueError, FileNotFoundError) as e:
    sys.stderr.write(f'var-sweep: error: {e}\n')
    sys.exit(2)


def run():
  app.run(main, flags_parser=_parse)


if __name__ == '__main__':
  run()
