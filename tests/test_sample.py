"""The sampling CLI: the grid layout, usage errors."""

import os
import subprocess
import sys

import numpy as np
import pytest

from var_jax import errors
from var_jax.cli import sample


def test_image_grid_puts_each_class_on_a_row():
  img = np.zeros((6, 2, 2, 3), np.float32)
  for i in range(6):
    img[i] = i / 10  # sample i = class i // 3, column i % 3
  grid = sample.image_grid(img, rows=2)
  assert grid.shape == (4, 6, 3) and grid.dtype == np.uint8
  assert grid[0, 4, 0] == round(0.2 * 255) and grid[2, 0, 0] == round(0.3 * 255)


@pytest.mark.parametrize('argv, message', [
    ((), 'exactly one of --var'),
    (('--var=a.pth',), '--var needs --tokenizer'),
    (('--workdir=w', '--cfg=-1'), '--cfg must be >= 0'),
    (('--workdir=w', '--cfg=nan'), '--cfg must be >= 0 and finite, got nan'),
    (('--workdir=w', f'--out_dir={__file__}'), '--out_dir: '),
    (('--workdir=w', '--classes=a,b'), '--classes must be integers'),
    (('--workdir=w', '--batch_size=0'), 'must be positive'),
    (('--workdir=/nonexistent/run',), 'not a training workdir'),
])
def test_usage_errors_are_one_line_with_exit_code_2(argv, message):
  proc = subprocess.run([sys.executable, '-m', 'var_jax.sample', *argv], capture_output=True, text=True,
                        timeout=300, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode == errors.ConfigError.exit_code, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]  # one line, no help text, no traceback
  assert proc.stderr.startswith('var-sample: error: ') and message in proc.stderr
