"""`python -m var_jax.train --config=experiments/FILE.py[:ARG] --workdir=DIR [--config.KEY=VALUE]`.

Exit codes: 0 finished or preempted (rerun to resume), 2 a config or input error, 3 a non-finite loss (the last
good checkpoint is kept), 4 a data error, 5 the workdir is locked by another live run; each with one line on
stderr (`--traceback` for the traceback).
Multi-process runs: on TPU pods and SLURM `jax.distributed` is configured automatically; elsewhere pass
--coordinator_address/--num_processes/--process_id (see launch/local.sh).
"""
from absl import flags
from absl import logging
from ml_collections import config_flags

from var_jax import cli
from var_jax import errors
from var_jax.train import distributed

PROG = 'var-train'
config_flags.DEFINE_config_file('config', None, 'Experiment config file (get_config).')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (resumes if it holds checkpoints).')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'host:port of process 0.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'Index of this process.')


def main(argv):
  cli.no_positional(argv)
  if _WORKDIR.value is None:
    raise errors.ConfigError('--workdir is required')
  config = cli.config_file('config')
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  from var_jax.train import loop  # pylint: disable=g-import-not-at-top
  summary = loop.train(config, _WORKDIR.value)
  if summary.get('preempted'):
    logging.warning('stopped early at step %d (preempted); rerun the same command to resume', summary['step'])


def run():
  cli.run(main, prog=PROG)


if __name__ == '__main__':
  run()
