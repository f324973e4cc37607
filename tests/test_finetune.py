"""Fine-tuning (`init.path`): from an official-format .pth and from a var_jax run, another num_classes,
refused mismatches, and a SIGKILLed fine-tuning run that resumes from its own checkpoint."""
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import load_experiment
from var_jax import errors
from var_jax.models import var as var_lib
from var_jax.train import checkpoint
from var_jax.train import config as config_lib
from var_jax.train import engine as engine_lib
from var_jax.train import finetune
from var_jax.train import loop
from var_jax.weights import state_dict as sd
from var_jax.weights import var as var_weights

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 40  # of the CLI run: long enough that the SIGKILL after step 4 lands mid-run


def _model(cfg, **overrides):
  return var_lib.VAR(**{**var_lib.resolve(cfg.model), **overrides})


@pytest.fixture(scope='module')
def source_run(tmp_path_factory):
  """A 3-step var_jax run of the smoke fine-tuning config, from scratch (checkpoint at step 3)."""
  workdir = tmp_path_factory.mktemp('source')
  cfg = load_experiment('var_finetune', 'smoke')
  cfg.steps = 3
  loop.train(cfg, str(workdir), devices=jax.devices()[:1])
  return workdir


def test_official_pth_with_another_num_classes(tmp_path, caplog):
  cfg = load_experiment('var_finetune', 'smoke')
  src_model = _model(cfg, num_classes=5)
  src_params = jax.device_get(var_weights.param_shapes(src_model))  # shapes only: fill with numbers
  rng = np.random.default_rng(0)
  src_params = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), src_params)
  path = str(tmp_path / 'var_official.pth')
  sd.write_state_dict(path, var_weights.to_state_dict(src_params, src_model))

  cfg.init.path = path  # the run has 10 classes, the checkpoint 5
  engine = engine_lib.Engine(config_lib.resolve(cfg, 1), jax.devices()[:1])
  with caplog.at_level(logging.WARNING):
    params = jax.device_get(engine.init_state().params)
  assert 'class_emb initialised afresh' in caplog.text
  assert engine.task.start_record['reinitialised'] == ['class_emb']
  assert engine.task.start_record['source_num_classes'] == 5
  assert params['class_emb'].shape == (11, 32)  # 10 classes + the unconditional one
  for key, value in sd.flat_leaves(src_params).items():
    if key[0] != 'class_emb':
      np.testing.assert_array_equal(sd.flat_leaves(params)[key], value, err_msg='/'.join(key))


def test_mismatched_architecture_is_refused_with_the_keys(tmp_path):
  cfg = load_experiment('var_finetune', 'smoke')
  deeper = _model(cfg, depth=2)
  path = str(tmp_path / 'deeper.npz')
  params = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), var_weights.param_shapes(deeper))
  sd.write_state_dict(path, var_weights.to_state_dict(params, deeper))
  model = _model(cfg)
  with pytest.raises(errors.ConfigError, match='init.path=.*blocks/attn/qkv/kernel'):
    finetune.load(path, model, var_weights.param_shapes(model))
  with pytest.raises(errors.ConfigError, match='init.path=.*no such'):
    finetune.load(str(tmp_path / 'absent.pth'), model, var_weights.param_shapes(model))


def _start(workdir, log, init_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=1')
  with open(log, 'w') as out:
    return subprocess.Popen(
        [sys.executable, '-m', 'var_jax.train', '--config=experiments/var_finetune.py:smoke',
         f'--workdir={workdir}', f'--config.steps={STEPS}', f'--config.init.path={init_path}'],
        cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)


def _checkpoints(workdir):
  ckpts = pathlib.Path(workdir) / 'checkpoints'
  return sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) if ckpts.exists() else []


def test_from_a_var_jax_run_and_sigkill_resumes_from_its_own_checkpoint(source_run, tmp_path):
  _, _, src_params, src_step = checkpoint.load_run(str(source_run))
  assert src_step == 3
  run = tmp_path / 'finetune'
  log = tmp_path / 'run1.log'
  proc = _start(run, log, source_run)
  deadline = time.time() + 600
  while not (f'step 4/{STEPS}' in log.read_text() and 3 in _checkpoints(run)):
    assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  record = json.loads((run / 'init.json').read_text())
  assert record['source'] == 'var_jax run step 3' and record['reinitialised'] == []
  assert record['fingerprint'] == sd.fingerprint(src_params)  # the source checkpoint's very values

  # The source is gone: a resumed run must restore its own checkpoint and never read init.path again.
  moved = tmp_path / 'moved_source'
  os.rename(source_run, moved)
  try:
    log = tmp_path / 'run2.log'
    proc = _start(run, log, source_run)
    proc.wait(timeout=600)
    out = log.read_text()
  finally:
    os.rename(moved, source_run)
  assert proc.returncode == 0, out[-3000:]
  assert 'resumed from' in out and 'fine-tuning from' not in out
  done = json.loads((run / 'DONE').read_text())
  assert done['step'] == STEPS and done['init'] == record
  assert json.loads((run / 'config.json').read_text())['init']['path'] == str(source_run)
