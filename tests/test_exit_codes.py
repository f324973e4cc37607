"""The trainer's typed exit codes (`var_jax.errors`) with one-line errors, and the sweep's statuses from them."""
import io
import os
import re
import subprocess
import sys
import textwrap

from conftest import REPO
import ml_collections
import pytest

from var_jax import errors
from var_jax.scaling import runs as runs_lib
from var_jax.scaling import sweep
from var_jax.train import config as config_lib

SMOKE = ['--config=experiments/smoke.py:tokens', '--config.steps=3', '--config.log.every_steps=1',
         '--config.checkpoint.every_steps=1', '--config.eval.every_steps=3']


def _train(workdir, *flags, config=None):
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=1')
  argv = [sys.executable, '-m', 'var_jax.train', f'--workdir={workdir}', *(config or SMOKE), *flags]
  return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _error_lines(proc):
  return [l for l in proc.stderr.splitlines() if l.startswith('var-train: error:')]


@pytest.mark.parametrize('flags, config, code, message', [
    (('--config.optim.no_such_key=1',), None, errors.ConfigError.exit_code, 'no_such_key'),
    (('--config.model.num_heads=7',), None, errors.ConfigError.exit_code, 'divisible by num_heads=7'),
    (('--config.data.name=image_folder',), ['--config=experiments/smoke.py', '--config.steps=3'],
     errors.DataError.exit_code, 'data.path: image_folder needs the folder'),
    (('--config.optim.lr=1e38', '--config.optim.warmup_steps=0'), None, errors.DivergedError.exit_code,
     'non-finite loss=.* at step 2; stopping. The last good checkpoint is step 1'),
])
def test_trainer_exits_with_the_error_code_and_one_line(tmp_path, flags, config, code, message):
  proc = _train(tmp_path / 'run', *flags, config=config)
  assert proc.returncode == code, proc.stderr[-3000:]
  [line] = _error_lines(proc)
  assert re.search(message, line), line
  assert 'Traceback' not in proc.stderr


# A stand-in trainer that exits with the code its run's depth names (as the real one does for each error).
FAKE_TRAINER = textwrap.dedent('''
    import json, os, sys
    args = dict(a[2:].split('=', 1) for a in sys.argv[1:])
    with open(os.path.join(os.path.dirname(args['config']), 'run_config.json')) as f:
      depth = json.load(f)['model']['depth']
    with open(os.path.join(args['workdir'], 'metrics.jsonl'), 'w') as f:
      f.write(json.dumps(dict(step=1, split='train', loss=float('nan'))) + '\\n')
    sys.stderr.write(f'var-train: error: the trainer stopped (depth {depth})\\n')
    sys.exit({1: 3, 2: 4, 3: 2, 4: 0}[depth])
''')


def test_sweep_status_comes_from_the_exit_code(tmp_path, monkeypatch):
  script = tmp_path / 'fake_train.py'
  script.write_text(FAKE_TRAINER)
  monkeypatch.setenv(sweep.TRAINER_ENV, f'{sys.executable} {script}')
  base = config_lib.base_config()
  base.data.name = 'synthetic_tokens'
  c = ml_collections.ConfigDict(dict(base=base))
  c.axes = [('model.depth', (1, 2, 3, 4))]
  root = str(tmp_path / 'root')
  sweep.launch(c, root, 'local', report=False, out=io.StringIO())
  rows = {int(r['depth']): r for r in sweep.aggregate(root)}
  # exit 3: diverged; 4 (data) and 2 (config): failed, with the trainer's line; 0 without DONE: failed.
  assert {d: r['status'] for d, r in rows.items()} == {1: 'diverged', 2: 'failed', 3: 'failed', 4: 'failed'}
  assert rows[2]['error'] == 'var-train: error: the trainer stopped (depth 2)'
  assert rows[4]['error'] == 'exit status 0 without a DONE file'
  assert runs_lib.status(os.path.join(root, rows[1]['run_id'])) == 'diverged'
