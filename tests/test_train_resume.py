"""Preemption and failure handling of the training loop, through the real CLI.

With three steps per call (`train.steps_per_call`): SIGKILL then restart recomputes bit-identical losses;
SIGTERM saves the current call's last step and exits 0; a corrupt latest checkpoint is reported and the previous
one used; the run's losses are those of one step per call. A non-finite loss stops the run. Every other task
with randomness of its own in the step (SHORT_RUNS: MaskGIT's masks) resumes a SIGKILLed 3-step run bit for bit.
"""
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# Long enough that a SIGTERM sent after step 5 lands mid-run even when steps take milliseconds; not a multiple of
# K, so the last call is a shorter one.
STEPS, K = 40, 3
COMMON = [f'--config.steps={STEPS}', '--config.log.every_steps=1', f'--config.checkpoint.every_steps={2 * K}',
          '--config.checkpoint.keep=3', '--config.eval.every_steps=60', '--config.eval.batches=1']
KEYS = ('loss', 'loss_last_scale', 'acc', 'grad_norm')
# (config of a 3-step run that checkpoints at step 2 and evaluates at 3, the train metrics compared).
SHORT_RUNS = [pytest.param('experiments/maskgit_shapes.py:test', ('loss', 'acc', 'nll', 'grad_norm'), id='maskgit')]


def _start(workdir, log, *extra, config='experiments/smoke.py:tokens', common=tuple(COMMON)):
  """The CLI on 1 CPU device, output to the file `log` (pipes could fill up and block it)."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=1')
  with open(log, 'w') as out:
    return subprocess.Popen(
        [sys.executable, '-m', 'var_jax.train', f'--config={config}', f'--workdir={workdir}', *common, *extra],
        cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)


def _by_step(workdir):
  return {r['step']: r for r in _records(workdir)}


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


def _kill_past_checkpoint(proc, workdir, timeout=900, poll_s=0.05):
  """SIGKILL at a moment (the process paused to look) when steps past its newest complete checkpoint are logged."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    assert proc.poll() is None, 'the run ended before it could be killed'
    proc.send_signal(signal.SIGSTOP)
    saved = _steps(workdir) if (pathlib.Path(workdir) / 'checkpoints').exists() else []
    if saved and max(_by_step(workdir), default=0) > saved[-1]:
      proc.send_signal(signal.SIGKILL)
      proc.wait()
      return
    proc.send_signal(signal.SIGCONT)
    time.sleep(poll_s)
  pytest.fail('timed out waiting for steps past a checkpoint')


def _finish(proc, log, timeout=900):
  proc.wait(timeout=timeout)
  return proc.returncode, pathlib.Path(log).read_text()


def _steps(workdir):
  ckpts = pathlib.Path(workdir) / 'checkpoints'
  return sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())


def test_kill_sigterm_corrupt_and_resume_match_an_uninterrupted_run(tmp_path):
  ref_dir, run_dir = tmp_path / 'reference', tmp_path / 'interrupted'
  reference = _start(ref_dir, tmp_path / 'reference.log')  # one step per call, alongside the interrupted run
  attempts = []  # (train records by step, log of the attempt that resumed them), read before truncation

  # 1. SIGKILL with steps logged past the newest complete checkpoint.
  proc = _start(run_dir, tmp_path / 'run1.log', f'--config.train.steps_per_call={K}')
  _kill_past_checkpoint(proc, run_dir)
  killed = _by_step(run_dir)

  # 2. Restart: resumes from a checkpoint; SIGTERM mid-way saves the end of the call it is in and exits cleanly.
  log = tmp_path / 'run2.log'
  proc = _start(run_dir, log, f'--config.train.steps_per_call={K}')
  _wait_for(proc, log, lambda text: re.search(r'step \d+/', text.partition('resumed from')[2]))
  proc.send_signal(signal.SIGTERM)
  rc, out = _finish(proc, log)
  assert rc == 0, out[-3000:]
  attempts.append((killed, out))
  last_logged = max(r['step'] for r in _records(run_dir))
  assert _steps(run_dir)[-1] == last_logged < STEPS and last_logged % K == 0
  assert not (run_dir / 'DONE').exists()
  stopped = _by_step(run_dir)

  # 3. Corrupt that newest checkpoint: it is reported, set aside, and the previous one is used.
  corrupt = _steps(run_dir)[-1]
  for path in (run_dir / 'checkpoints' / str(corrupt) / 'state').rglob('*'):
    if path.is_file():
      path.write_bytes(b'')
  log = tmp_path / 'run3.log'
  rc, out = _finish(_start(run_dir, log, f'--config.train.steps_per_call={K}'), log)
  assert rc == 0, out[-3000:]
  assert f'checkpoint step {corrupt}' in out and 'unreadable' in out
  assert (run_dir / 'corrupt_checkpoints' / str(corrupt)).exists()
  attempts.append((stopped, out))

  got = _records(run_dir)
  assert [r['step'] for r in got] == list(range(1, STEPS + 1))
  for records, resumed_log in attempts:  # steps past the checkpoint resumed from were computed twice
    resumed_at = int(re.search(r'resumed from \S+ at step (\d+)', resumed_log).group(1))
    twice = [t for t in records if t > resumed_at]
    assert twice, (resumed_at, sorted(records))
    for t in twice:  # bit for bit
      assert [records[t][k] for k in KEYS] == [got[t - 1][k] for k in KEYS], t

  rc, out = _finish(reference, tmp_path / 'reference.log')
  assert rc == 0, out[-3000:]
  want = _records(ref_dir)
  for key in ('lr', 'tokens_seen', 'flops_seen'):
    assert [r[key] for r in got] == [r[key] for r in want], key
  for key in KEYS:
    np.testing.assert_allclose([r[key] for r in got], [r[key] for r in want], rtol=1e-5, err_msg=key)
  final_eval = _records(ref_dir, 'eval')[-1]['loss']
  np.testing.assert_allclose(_records(run_dir, 'eval')[-1]['loss'], final_eval, rtol=1e-5)
  done = json.loads((run_dir / 'DONE').read_text())
  assert done['step'] == STEPS and done['eval_loss'] == _records(run_dir, 'eval')[-1]['loss']


@pytest.mark.parametrize('config,keys', SHORT_RUNS)
def test_a_sigkilled_three_step_run_resumes_bit_exact(tmp_path, config, keys):
  """Killed after logging step 3 (checkpoint 2 saved, 3 not: the step-3 eval compiles in between), then
  restarted: step 3 is recomputed from checkpoint 2 with the same metrics, bit for bit."""
  run_dir = tmp_path / 'run'
  proc = _start(run_dir, tmp_path / 'run1.log', config=config, common=())
  _kill_past_checkpoint(proc, run_dir, poll_s=0.01)
  killed = _by_step(run_dir)
  rc, out = _finish(_start(run_dir, tmp_path / 'run2.log', config=config, common=()), tmp_path / 'run2.log')
  assert rc == 0, out[-3000:]
  resumed_at = int(re.search(r'resumed from \S+ at step (\d+)', out).group(1))
  got = _by_step(run_dir)
  assert sorted(got) == [1, 2, 3]
  twice = [t for t in killed if t > resumed_at]
  assert twice, (resumed_at, sorted(killed))
  for t in twice:
    assert [killed[t][k] for k in keys] == [got[t][k] for k in keys], t
  done = json.loads((run_dir / 'DONE').read_text())
  assert done['step'] == 3 and done['eval_loss'] == _records(run_dir, 'eval')[-1]['loss']


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
