"""Preemption and failure handling of the training loop, through the real CLI.

SIGKILL then restart gives bit-identical losses; SIGTERM saves the current step and exits 0; a
corrupt latest checkpoint is reported and the previous one used; a non-finite loss stops the run.
"""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# Long enough that a SIGTERM sent after step 5 lands mid-run even when steps take milliseconds.
STEPS = 40
COMMON = [f'--config.steps={STEPS}', '--config.log.every_steps=1', '--config.checkpoint.every_steps=3',
          '--config.checkpoint.keep=3', '--config.eval.every_steps=100', '--config.eval.batches=1']


def _start(workdir, log, *extra):
  """The CLI on 1 CPU device, output to the file `log` (pipes could fill up and block it)."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=1')
  with open(log, 'w') as out:
    return subprocess.Popen(
        [sys.executable, '-m', 'var_jax.train', '--config=experiments/smoke.py:tokens',
         f'--workdir={workdir}', *COMMON, *extra],
        cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)


def _records(workdir, split='train'):
  path = pathlib.Path(workdir) / 'metrics.jsonl'
  if not path.exists():
    return []
  return [r for r in map(json.loads, path.read_text().splitlines()) if r['split'] == split]


def _wait_for(proc, log, condition, timeout=900):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if condition(pathlib.Path(log).read_text()):
      return
    assert proc.poll() is None, pathlib.Path(log).read_text()[-3000:]
    time.sleep(0.05)
  pytest.fail(f'timed out waiting on {log}')


def _finish(proc, log, timeout=900):
  proc.wait(timeout=timeout)
  return proc.returncode, pathlib.Path(log).read_text()


def _steps(workdir):
  ckpts = pathlib.Path(workdir) / 'checkpoints'
  return sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())


def test_kill_sigterm_corrupt_and_resume_match_an_uninterrupted_run(tmp_path):
  ref_dir, run_dir = tmp_path / 'reference', tmp_path / 'interrupted'
  reference = _start(ref_dir, tmp_path / 'reference.log')  # runs alongside the interrupted one

  # 1. SIGKILL once step 4 is logged and the step-3 checkpoint is complete.
  log = tmp_path / 'run1.log'
  proc = _start(run_dir, log)
  _wait_for(proc, log, lambda text: f'step 4/{STEPS}' in text and 3 in _steps(run_dir))
  proc.send_signal(signal.SIGKILL)
  proc.wait()

  # 2. Restart: resumes from 3; SIGTERM mid-way saves the step it is on and exits cleanly.
  log = tmp_path / 'run2.log'
  proc = _start(run_dir, log)
  _wait_for(proc, log, lambda text: f'step 5/{STEPS}' in text)
  proc.send_signal(signal.SIGTERM)
  rc, out = _finish(proc, log)
  assert rc == 0, out[-3000:]
  assert 'at step 3' in out and 'resumed from' in out
  last_logged = max(r['step'] for r in _records(run_dir))
  assert _steps(run_dir)[-1] == last_logged < STEPS
  assert not (run_dir / 'DONE').exists()

  # 3. Corrupt that newest checkpoint: it is reported, set aside, and the previous one is used.
  corrupt = _steps(run_dir)[-1]
  for path in (run_dir / 'checkpoints' / str(corrupt) / 'state').rglob('*'):
    if path.is_file():
      path.write_bytes(b'')
  log = tmp_path / 'run3.log'
  rc, out = _finish(_start(run_dir, log), log)
  assert rc == 0, out[-3000:]
  assert f'checkpoint step {corrupt}' in out and 'unreadable' in out
  assert (run_dir / 'corrupt_checkpoints' / str(corrupt)).exists()

  rc, out = _finish(reference, tmp_path / 'reference.log')
  assert rc == 0, out[-3000:]
  want, got = _records(ref_dir), _records(run_dir)
  assert [r['step'] for r in got] == list(range(1, STEPS + 1))
  for key in ('loss', 'loss_last_scale', 'acc', 'grad_norm', 'lr', 'tokens_seen', 'flops_seen'):
    assert [r[key] for r in got] == [r[key] for r in want], key  # bit for bit
  assert _records(run_dir, 'eval')[-1]['loss'] == _records(ref_dir, 'eval')[-1]['loss']
  done = json.loads((run_dir / 'DONE').read_text())
  assert done['step'] == STEPS and done['eval_loss'] == _records(ref_dir, 'eval')[-1]['loss']


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  from conftest import load_experiment
  from var_jax import errors
  from var_jax.train import loop
  cfg = load_experiment('smoke', 'tokens')
  # An lr this large puts params near the float32 limit after one step, so step 2 overflows.
  cfg.optim.update(dict(lr=1e38, warmup_steps=0))
  cfg.update(dict(steps=5))
  cfg.checkpoint.every_steps = 1
  cfg.log.every_steps = 1
  with pytest.raises(errors.DivergedError,
                     match=r'non-finite loss=.* at step 2; stopping. The last good checkpoint is step 1'):
    loop.train(cfg, str(tmp_path), devices=jax.devices()[:1])
  assert _steps(tmp_path) == [1]
  assert [r['step'] for r in _records(tmp_path)] == [1]
