"""Bounded failure of a multi-process job (`var_jax.train.distributed`): when one of 2 processes is SIGKILLed,
the other exits within the heartbeat timeout (plus slack), aborted by jax's coordination service, and the
job, rerun (here on another topology: 1 process x 2 devices), resumes from the last committed checkpoint."""
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

from conftest import REPO
import pytest

HEARTBEAT_S = 5
ARGS = ['--config=experiments/smoke.py:tokens', '--config.log.every_steps=1', '--config.checkpoint.every_steps=3',
        '--config.eval.every_steps=100000', '--config.eval.batches=1']


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _steps(workdir):
  ckpts = pathlib.Path(workdir) / 'checkpoints'
  return sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) if ckpts.is_dir() else []


@pytest.mark.slow
def test_a_killed_process_stops_the_other_and_the_job_resumes(tmp_path):
  workdir = tmp_path / 'run'
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=1',
             VAR_JAX_HEARTBEAT_TIMEOUT=str(HEARTBEAT_S), VAR_JAX_SHUTDOWN_TIMEOUT=str(HEARTBEAT_S))
  job = [*ARGS, '--config.steps=100000', f'--workdir={workdir}', f'--coordinator_address=127.0.0.1:{_free_port()}',
         '--num_processes=2']
  logs = [tmp_path / f'p{i}.log' for i in range(2)]
  procs = []
  for i, log in enumerate(logs):
    with open(log, 'w') as out:
      procs.append(subprocess.Popen([sys.executable, '-m', 'var_jax.train', *job, f'--process_id={i}'], cwd=REPO,
                                    env=env, stdout=out, stderr=subprocess.STDOUT))
  try:
    deadline = time.time() + 900
    while 3 not in _steps(workdir):
      assert time.time() < deadline and all(p.poll() is None for p in procs), logs[0].read_text()[-3000:]
      time.sleep(0.2)
    procs[1].kill()
    killed = time.time()
    rc = procs[0].wait(timeout=HEARTBEAT_S + 120)
    elapsed = time.time() - killed
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  out = logs[0].read_text()
  assert rc == -signal.SIGABRT, out[-3000:]
  assert elapsed < HEARTBEAT_S + 30, elapsed
  assert 'stopped sending heartbeats' in out
  last = _steps(workdir)[-1]

  # The rerun job (one process, two devices) resumes from the last committed checkpoint.
  proc = subprocess.run(
      [sys.executable, '-m', 'var_jax.train', *ARGS, f'--config.steps={last + 1}', f'--workdir={workdir}'],
      cwd=REPO, env=dict(env, XLA_FLAGS='--xla_force_host_platform_device_count=2'), capture_output=True,
      text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f'at step {last}' in proc.stderr and 'resumed from' in proc.stderr
  assert (workdir / 'DONE').exists() and _steps(workdir)[-1] == last + 1
