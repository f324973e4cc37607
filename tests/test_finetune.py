"""Fine-tuning (`init.path`): from an official-format .pth with another num_classes, a refused mismatch, a
SIGKILLed fine-tuning run that resumes from its own checkpoint, and from a var_jax run."""
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
from var_jax.generate import generator
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


def _official_file(path, **overrides):
  """An official-format state dict of the smoke fine-tuning model (with `overrides`), random numbers."""
  cfg = load_experiment('var_finetune', 'smoke')
  model = _model(cfg, **overrides)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), var_weights.param_shapes(model))
  sd.write_state_dict(str(path), var_weights.to_state_dict(params, model))
  return str(path), params


@pytest.fixture(scope='module')
def official_pth(tmp_path_factory):
  """(path, params) of an official .pth of the smoke model trained on 5 classes (the run has 10)."""
  return _official_file(tmp_path_factory.mktemp('official') / 'var_official.pth', num_classes=5)


def test_official_pth_with_another_num_classes(official_pth, caplog):
  path, src_params = official_pth
  cfg = load_experiment('var_finetune', 'smoke')
  cfg.init.path = path
  engine = engine_lib.Engine(config_lib.resolve(cfg, 1), jax.devices()[:1])
  with caplog.at_level(logging.WARNING):
    start = engine.task.start_params()
    params = jax.device_get(engine.init_state(start).params)
  assert 'class_emb initialised afresh' in caplog.text
  assert start.record['reinitialised'] == ['class_emb']
  assert start.record['source_num_classes'] == 5
  assert params['class_emb'].shape == (11, 32)  # 10 classes + the unconditional one
  for key, value in sd.flat_leaves(src_params).items():
    if key[0] != 'class_emb':
      np.testing.assert_array_equal(sd.flat_leaves(params)[key], value, err_msg='/'.join(key))


def test_mismatched_architecture_is_refused_with_the_keys(tmp_path):
  path, _ = _official_file(tmp_path / 'deeper.npz', depth=2)
  model = _model(load_experiment('var_finetune', 'smoke'))
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


@pytest.fixture(scope='module')
def finetuned(official_pth, tmp_path_factory):
  """A CLI fine-tuning run from the .pth, SIGKILLed after its step-3 checkpoint, then resumed with the .pth
  gone; (run folder, first log, the resumed run's log, its summary)."""
  root = tmp_path_factory.mktemp('finetune')
  run, path, log1 = root / 'run', official_pth[0], root / 'run1.log'
  proc = _start(run, log1, path)
  deadline = time.time() + 600
  while not (f'step 4/{STEPS}' in log1.read_text() and 3 in _checkpoints(run)):
    assert proc.poll() is None and time.time() < deadline, log1.read_text()[-3000:]
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  os.rename(path, path + '.gone')  # a resumed run must restore its own checkpoint, never init.path
  cfg = load_experiment('var_finetune', 'smoke')
  cfg.steps, cfg.init.path = STEPS, path
  records, absl_logger = _Records(), logging.getLogger('absl')
  level = absl_logger.level
  absl_logger.addHandler(records)
  absl_logger.setLevel(logging.INFO)
  try:  # resumed in this process (cheaper than a second CLI start)
    summary = loop.train(cfg, str(run), devices=jax.devices()[:1])
  finally:
    absl_logger.removeHandler(records)
    absl_logger.setLevel(level)
    os.rename(path + '.gone', path)
  return run, log1.read_text(), '\n'.join(records.lines), summary


class _Records(logging.Handler):
  def __init__(self):
    super().__init__(logging.INFO)
    self.lines = []

  def emit(self, record):
    self.lines.append(record.getMessage())


def test_sigkilled_finetuning_resumes_from_its_own_checkpoint(finetuned, official_pth):
  run, out1, out2, summary = finetuned
  path, src_params = official_pth
  assert 'class_emb initialised afresh' in out1
  record = json.loads((run / 'init.json').read_text())
  assert record['path'] == path and record['source'] == 'official state dict'
  assert record['reinitialised'] == ['class_emb'] and record['source_num_classes'] == 5
  assert record['fingerprint'] == sd.fingerprint({k: v for k, v in src_params.items() if k != 'class_emb'})
  assert 'resumed from' in out2 and 'fine-tuning from' not in out2
  done = json.loads((run / 'DONE').read_text())
  assert done['step'] == summary['step'] == STEPS and done['init'] == record
  assert json.loads((run / 'config.json').read_text())['init']['path'] == path


def test_init_from_a_var_jax_run(finetuned):
  run = finetuned[0]
  gen = generator.from_run(str(run))
  run_params, step, model = gen.params, gen.step, gen.model
  params, record = finetune.load(str(run), model, var_weights.param_shapes(model))
  assert record['source'] == f'var_jax run step {step}' and record['reinitialised'] == []
  for key, value in sd.flat_leaves(jax.device_get(run_params)).items():
    np.testing.assert_array_equal(sd.flat_leaves(params)[key], value, err_msg='/'.join(key))
  # A run with another number of classes starts from all of it but the class embedding.
  params, record = finetune.load(str(run), model.clone(num_classes=3), var_weights.param_shapes(model) | {
      'class_emb': jax.ShapeDtypeStruct((4, 32), np.float32)})
  assert record['reinitialised'] == ['class_emb'] and 'class_emb' not in params
