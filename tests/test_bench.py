"""`python -m var_jax.bench`: one JSON object of throughput figures, without TFDS or grain."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from var_jax import flops

REPO = pathlib.Path(__file__).resolve().parents[1]
FLAGS = ['--depth', '1', '--batch', '2', '--vocab', '32', '--patch-nums', '1,2', '--steps', '2',
         '--json']


@pytest.fixture(scope='module')
def bare_env(tmp_path_factory):
  """Env in which TFDS and grain cannot be imported, as on a bare accelerator image."""
  blocked = tmp_path_factory.mktemp('blocked')
  for name in ('tensorflow_datasets', 'grain', 'tensorflow'):
    (blocked / f'{name}.py').write_text(f'raise ImportError("{name} is blocked in this test")\n')
  return dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=1',
              PYTHONPATH=os.pathsep.join([str(blocked), str(REPO)]))


@pytest.mark.parametrize('mode', ['train', 'sample'])
def test_bench_prints_one_json_object(mode, bare_env):
  proc = subprocess.run([sys.executable, '-m', 'var_jax.bench', mode, *FLAGS], cwd=REPO,
                        env=bare_env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == 1, proc.stdout
  r = json.loads(lines[0])
  assert r['mode'] == mode and r['depth'] == 1 and r['batch'] == 2
  assert 0 < r['step_time_min_s'] <= r['step_time_s'] and r['compile_time_s'] >= 0
  # The engine's parameter count (from the built model) is the closed-form count of the same configuration.
  kw = dict(depth=1, vocab_size=32, patch_nums=(1, 2), cvae=32, num_classes=1000)
  assert r['params'] == flops.param_counts(kw)['total']
  assert r['tokens_per_s'] > 0 and r['tflops_per_s'] > 0
  assert r['mfu'] is None and r['peak_bytes'] is None  # CPU: no peak FLOP/s, no memory stats


def test_bench_rejects_bad_mode(bare_env):
  proc = subprocess.run([sys.executable, '-m', 'var_jax.bench', 'fly', *FLAGS], cwd=REPO,
                        env=bare_env, capture_output=True, text=True, timeout=600)
  assert proc.returncode != 0 and 'usage: python -m var_jax.bench {train|sample|compare}' in proc.stderr


def test_bench_refuses_zero_steps_in_one_line(bare_env):
  proc = subprocess.run([sys.executable, '-m', 'var_jax.bench', 'train', *FLAGS, '--steps=0'], cwd=REPO,
                        env=bare_env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 2 and proc.stderr.count('\n') == 1 and '--steps' in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize('flags, message', [
    (['--official=/nonexistent'], 'is not a checkout of FoundationVision/VAR'),
    ([], '--official is required'),
])
def test_compare_says_what_is_missing_in_one_line(flags, message, bare_env):
  proc = subprocess.run([sys.executable, '-m', 'var_jax.bench', 'compare', *flags], cwd=REPO, env=bare_env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and message in proc.stderr
