"""`python -m var_jax.data` and `python -m var_jax.tokenize` report bad input in one line, no traceback."""
import subprocess
import sys

from conftest import REPO


def _run(module, *args):
  return subprocess.run([sys.executable, '-m', module, *args], capture_output=True, text=True, cwd=REPO,
                        timeout=300)


def test_missing_manual_dir_is_one_line_naming_the_path(tmp_path):
  res = _run('var_jax.data', '--config=experiments/tokenizer_imagenet.py', f'--config.data.data_dir={tmp_path}',
             f'--config.data.manual_dir={tmp_path / "empty"}')
  assert res.returncode != 0
  assert 'Traceback' not in res.stderr
  last = res.stderr.strip().splitlines()[-1]
  assert last.startswith(f"var-data: error: data.manual_dir: '{tmp_path / 'empty'}' is missing or empty")
  assert 'ILSVRC2012_img_train.tar' in last


def test_tokenize_unknown_dataset_is_one_line(tmp_path):
  res = _run('var_jax.tokenize', '--config=experiments/smoke.py', f'--out={tmp_path / "tok"}',
             f'--config.data.data_dir={tmp_path}', '--config.data.name=no_such_dataset')
  assert res.returncode != 0
  assert 'Traceback' not in res.stderr
  assert res.stderr.strip().splitlines()[-1].startswith("var-tokenize: error: data.name: 'no_such_dataset'")
