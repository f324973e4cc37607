"""Multi-host training on one machine: 2 processes x 2 fake CPU devices (gloo on 127.0.0.1) through
launch/local.sh give the same losses as 1 process with 4 devices, on image data (synthetic shapes through
TFDS and grain), whose global batches do not depend on the process count."""
import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
ARGS = ['--config=experiments/smoke.py', '--config.steps=3', '--config.log.every_steps=1',
        '--config.eval.every_steps=3', '--config.eval.batches=1', '--config.checkpoint.every_steps=3',
        '--config.data.num_train=64', '--config.data.num_eval=16']


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _losses(workdir):
  lines = (pathlib.Path(workdir) / 'metrics.jsonl').read_text().splitlines()
  return [(r['split'], r['step'], r['loss']) for r in map(json.loads, lines)]


@pytest.mark.slow
def test_two_processes_match_one_process_on_four_devices(tmp_path):
  from var_jax.data import sources  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path / 'tfds')
  sources.prepare(dict(name='synthetic_shapes', data_dir=data_dir, image_size=32, num_train=64, num_eval=16))
  args = [*ARGS, f'--config.data.data_dir={data_dir}']
  env = dict(os.environ, PYTHON=sys.executable)
  multi = subprocess.Popen(
      ['bash', str(REPO / 'launch' / 'local.sh'), '--devices', '2', '--port', str(_free_port()),
       '2', '--', sys.executable, '-m', 'var_jax.train', *args, f'--workdir={tmp_path / "multi"}'],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  single = subprocess.Popen(
      [sys.executable, '-m', 'var_jax.train', *args, f'--workdir={tmp_path / "single"}'],
      cwd=REPO, env=dict(os.environ, JAX_PLATFORMS='cpu',
                         XLA_FLAGS='--xla_force_host_platform_device_count=4'),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  for proc in (multi, single):
    _, err = proc.communicate(timeout=1200)
    assert proc.returncode == 0, err[-4000:]
  got, want = _losses(tmp_path / 'multi'), _losses(tmp_path / 'single')
  assert [g[:2] for g in got] == [w[:2] for w in want] == [
      ('train', 1), ('train', 2), ('train', 3), ('eval', 3)]
  np.testing.assert_allclose([g[2] for g in got], [w[2] for w in want], rtol=1e-6)
  config = json.loads((tmp_path / 'multi' / 'config.json').read_text())
  assert config['mesh']['data'] == 4  # the mesh spans both processes' devices
  assert (tmp_path / 'multi' / 'checkpoints' / '3').is_dir()
  assert json.loads((tmp_path / 'multi' / 'DONE').read_text())['step'] == 3
