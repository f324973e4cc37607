"""`python -m var_jax.train --config=experiments/FILE.py[:ARG] --workdir=DIR [--config.KEY=VALUE]`.

Multi-process runs: on TPU pods and SLURM `jax.distributed` is configured automatically; elsewhere
pass --coordinator_address/--num_processes/--process_id (see launch/local.sh).
"""
import logging as py_logging
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from var_jax.train import distributed

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file (get_config).', allow_override=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (resumes if it holds checkpoints).', allow_override=True)
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'host:port of process 0.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'Index of this process.')


class _QuietOrbax(py_logging.Filter):
  """Orbax logs every save step at INFO; keep its warnings and errors only."""

  def filter(self, record):
    return record.levelno >= py_logging.WARNING or 'orbax' not in record.pathname


def _fail(message: str) -> None:
  sys.stderr.write(f'var-train: error: {message}\n')
  sys.exit(2)


def _parse_flags(argv):
  """absl parsing, with config override mistakes reported in one line instead of a traceback."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(str(e).splitlines()[0])
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    # ml_collections raises these for `--config.no_such_key=...` and badly typed overrides.
    message = str(e.args[0] if e.args else e).replace('\n', ' ').strip('\'"')
    _fail(f'bad --config override: {message}')


def main(argv):
  if len(argv) > 1:
    _fail(f'unexpected arguments {argv[1:]}')
  if _CONFIG.value is None or _WORKDIR.value is None:
    _fail('--config and --workdir are required')
  logging.get_absl_handler().addFilter(_QuietOrbax())
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  from var_jax.train import loop  # pylint: disable=g-import-not-at-top
  try:
    summary = loop.train(_CONFIG.value, _WORKDIR.value)
  except (ValueError, loop.NonFiniteLossError) as e:
    if isinstance(e, ValueError) and not str(e).startswith(('config', 'mesh', 'model', 'sharding',
                                                            'tokenizer', 'distributed')):
      raise
    _fail(str(e))
  if summary.get('preempted'):
    logging.warning('stopped early at step %d (preempted); rerun the same command to resume',
                    summary['step'])


def run():
  app.run(main, flags_parser=_parse_flags)


if __name__ == '__main__':
  run()
