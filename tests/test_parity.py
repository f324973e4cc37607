"""The parity tool: reproduces fixture A, flags wrong keys, skips what it cannot compute."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from var_jax.cli import parity

TOKENIZER_KEYS = ('enc_f', 'recon', 'recon_from_idx', 'var_input')


def _tokenizer_keys(expected):
  scales = [k for k in expected if k.startswith('idx_')]
  return list(TOKENIZER_KEYS) + scales + [k.replace('idx_', 'fhat_') for k in scales]


def test_cli_reproduces_fixture_a(fixture_a, tmp_path):
  out = tmp_path / 'result.npz'
  proc = subprocess.run(
      [sys.executable, '-m', 'var_jax.parity', f'--fixture={fixture_a}', f'--out={out}'],
      capture_output=True, text=True, env={**os.environ, 'JAX_PLATFORMS': 'cpu'}, check=False)
  assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
  expected = np.load(fixture_a / 'expected.npz')
  result = np.load(out)
  printed = {line.split()[0]: line.split()[1] for line in proc.stdout.splitlines()[:-1]}
  edit_keys = [k for k in expected.files if k.startswith('edit_') and k not in parity.INPUT_KEYS]
  assert edit_keys  # edit_idx_k (exact) and edit_img, through the editing path
  # The official recipe, step by step, through the training engine.
  train_keys = [k for k in ('train_loss', 'train_grad_norm', 'train_lr', 'trained_logits') if k in expected]
  assert len(train_keys) == 4
  for key in _tokenizer_keys(expected.files) + edit_keys + train_keys:
    # Same names, shapes and PyTorch layouts as the fixture.
    assert result[key].shape == expected[key].shape, key
    assert printed[key] == 'ok', key
  # Inputs are not reported (not even as skipped).
  assert not set(printed) & set(parity.INPUT_KEYS)
  assert proc.stdout.splitlines()[-1].endswith(' 0 failed')


def test_wrong_values_fail_and_missing_weights_skip(fixture_a, tmp_path):
  expected = dict(np.load(fixture_a / 'expected.npz'))
  bad = tmp_path / 'bad'
  bad.mkdir()
  shutil.copy(fixture_a / 'config.json', bad / 'config.json')
  shutil.copy(fixture_a / 'vae_state.npz', bad / 'vae_state.npz')
  tampered = dict(expected)
  tampered['idx_2'] = expected['idx_2'].copy()
  tampered['idx_2'][0, 0] = (tampered['idx_2'][0, 0] + 1) % json.loads(
      (fixture_a / 'config.json').read_text())['V']
  tampered['recon'] = expected['recon'] + 3e-4
  np.savez(bad / 'expected.npz', **tampered)
  _, rows = parity.check_fixture(str(bad))
  status = {r.key: r.status for r in rows}
  assert status['idx_2'] == 'FAIL' and status['recon'] == 'FAIL'
  for key in set(_tokenizer_keys(expected)) - {'idx_2', 'recon'}:
    assert status[key] == 'ok', key
  # Without var weights, the transformer keys are skipped, never failed.
  for key in ('logits', 'ce_loss', 'gen_img', 'train_loss', 'trained_logits'):
    if key in expected:
      assert status[key] == 'skipped', key

  # No weights at all: every key is skipped, with the reason.
  empty = tmp_path / 'empty'
  empty.mkdir()
  shutil.copy(fixture_a / 'config.json', empty / 'config.json')
  shutil.copy(fixture_a / 'expected.npz', empty / 'expected.npz')
  computed, rows = parity.check_fixture(str(empty))
  assert not computed and {r.status for r in rows} == {'skipped'}
  assert 'no vae_state.npz or vae.pth' in rows[0].detail


def test_compare_rules():
  want = np.array([[10.0, -20.0]], np.float32)
  # Tolerance scales with max(1, |expected|max): 1e-3 off on values of size 20 passes.
  assert parity.compare('x', want + 1e-3, want).status == 'ok'
  assert parity.compare('x', want + 3e-3, want).status == 'FAIL'
  small = np.array([0.1, 0.2], np.float32)
  assert parity.compare('x', small + 2e-4, small).status == 'FAIL'
  idx = np.array([[1, 2, 3]], np.int64)
  assert parity.compare('i', idx, idx).status == 'ok'
  row = parity.compare('i', idx + np.array([[0, 0, 1]]), idx)
  assert row.status == 'FAIL' and row.detail == '1 of 3 differ'
  assert parity.compare('x', small[None], small).status == 'FAIL'


def test_not_a_fixture_folder(tmp_path):
  with pytest.raises(ValueError, match='not a parity fixture folder'):
    parity.check_fixture(str(tmp_path))


def test_var_keys_from_own_tokens(fixture_a):
  # logits and ce_loss come from this port's own tokens of input_img, end to end.
  fx = parity.Fixture.load(str(fixture_a))
  out = parity.var_keys(fx)
  for key in ('logits', 'ce_loss'):
    row = parity.compare(key, out[key], fx.expected[key])
    assert row.status == 'ok', (key, row.detail)
  assert {'var', 'generation', 'editing', 'training'} <= set(parity.PRODUCERS)
