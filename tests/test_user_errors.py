"""Every user error of the entry points is one line `PROG: error: ...` naming the file or key, with its exit
code, no traceback and no help text; the trainer writes nothing before its inputs are checked.

The commands run as subprocesses, four at a time, once for the module; each case asserts on its own result.
"""
import concurrent.futures
import os
import pathlib
import subprocess
import sys

from conftest import REPO
import numpy as np
import pytest

from var_jax import errors
from var_jax.train import config as config_lib
from var_jax.train import loop

CONFIG, DATA, WEIGHTS = errors.ConfigError.exit_code, errors.DataError.exit_code, errors.WeightsError.exit_code
TRAIN = ['var_jax.train', '--config=experiments/smoke.py:tokens']
# (name, module and flags ({tmp} is the case folder), exit code, text the error line must hold)
CASES = [
    ('convert_garbage_pth', ['var_jax.convert', '--src={tmp}/garbage.pth', '--dst={tmp}/out'], WEIGHTS,
     'garbage.pth'),
    ('convert_mismatch', ['var_jax.convert', '--src={tmp}/other.npz', '--dst={tmp}/out'], WEIGHTS, 'other.npz'),
    ('sample_missing_var', ['var_jax.sample', '--var={tmp}/missing.pth', '--tokenizer={tmp}/missing.pth'],
     WEIGHTS, 'missing.pth'),
    ('sample_no_checkpoints', ['var_jax.sample', '--workdir={tmp}/run'], CONFIG, 'no checkpoints'),
    ('sample_cfg', ['var_jax.sample', '--workdir={tmp}/run', '--cfg=-1'], CONFIG, '--cfg'),
    ('sample_classes', ['var_jax.sample', '--workdir={tmp}/run', '--classes=a,b'], CONFIG, '--classes'),
    ('fit_one_row', ['var_jax.fit', '--input={tmp}/one_row.csv', '--out={tmp}/fit.json'], CONFIG, 'points'),
    ('fit_missing_column', ['var_jax.fit', '--input={tmp}/no_loss.csv', '--out={tmp}/fit.json'], CONFIG, 'loss'),
    ('fit_no_results', ['var_jax.fit', '--input={tmp}', '--out={tmp}/fit.json'], CONFIG, '--aggregate_only'),
    ('train_unknown_key', TRAIN + ['--workdir={tmp}/w', '--config.optim.no_such_key=1'], CONFIG, 'no_such_key'),
    ('train_missing_data_path', ['var_jax.train', '--config=experiments/smoke.py', '--workdir={tmp}/w',
                                 '--config.data.name=image_folder', '--config.data.path={tmp}/nowhere'],
     DATA, 'nowhere'),
    ('train_workdir_is_a_file', TRAIN + ['--workdir={tmp}/garbage.pth'], CONFIG, 'garbage.pth'),
    ('train_missing_config', ['var_jax.train', '--config={tmp}/nope.py', '--workdir={tmp}/w'], CONFIG,
     'nope.py: no such file'),
    ('train_override_typo', TRAIN + ['--workdir={tmp}/w', '--config.model.dpeth=3'], CONFIG,
     'unknown key \'dpeth\' Did you mean "depth"'),
    ('sweep_missing_config', ['var_jax.sweep', '--config={tmp}/nope.py', '--workdir={tmp}/s'], CONFIG,
     'nope.py: no such file'),
    ('sweep_unknown_key', ['var_jax.sweep', '--config={tmp}/sweep.py', '--workdir={tmp}/s', '--launcher=print'],
     CONFIG, "unknown config key 'model.no_such_key'"),
    ('fit_missing_csv', ['var_jax.fit', '--input={tmp}/missing.csv', '--out={tmp}/fit.json'], CONFIG,
     'missing.csv: no such file'),
    ('sample_top_k', ['var_jax.sample', '--workdir={tmp}/run', '--top_k=-1'], CONFIG, '--top_k'),
]
_PROGS = {'var_jax.convert': 'var-convert', 'var_jax.sample': 'var-sample', 'var_jax.fit': 'var-fit',
          'var_jax.train': 'var-train', 'var_jax.sweep': 'var-sweep'}
SWEEP = """
from var_jax.train import config as config_lib
import ml_collections
def get_config(arg=None):
  return ml_collections.ConfigDict(dict(base=config_lib.base_config(), axes=[('model.no_such_key', (1,))]))
"""


def _inputs(tmp: pathlib.Path) -> None:
  (tmp / 'garbage.pth').write_bytes(os.urandom(256))
  import numpy as np  # pylint: disable=g-import-not-at-top
  np.savez(tmp / 'other.npz', **{f'not.a.tokenizer.key{i}': np.zeros(3) for i in range(500)})
  (tmp / 'run').mkdir()
  (tmp / 'run' / 'config.json').write_text(config_lib.base_config().to_json())
  (tmp / 'one_row.csv').write_text('params,loss\n1000,3.2\n')
  (tmp / 'no_loss.csv').write_text('params,acc\n1000,0.1\n2000,0.2\n3000,0.3\n')
  (tmp / 'sweep.py').write_text(SWEEP)


def _run(case, tmp: pathlib.Path):
  name, (module, *flags), _, _ = case
  folder = tmp / name
  folder.mkdir()
  _inputs(folder)
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=1')
  argv = [sys.executable, '-m', module, *(f.format(tmp=folder) for f in flags)]
  return folder, subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope='module')
def results(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('user_errors')
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    return dict(zip([c[0] for c in CASES], pool.map(lambda c: _run(c, tmp), CASES)))


@pytest.mark.parametrize('case', CASES, ids=[c[0] for c in CASES])
def test_one_line_and_exit_code(results, case):
  name, (module, *_), code, text = case
  folder, proc = results[name]
  lines = [l for l in proc.stderr.splitlines() if l.startswith(f'{_PROGS[module]}: error:')]
  assert proc.returncode == code, proc.stderr[-3000:]
  assert len(lines) == 1 and text in lines[0], proc.stderr[-3000:]
  [line] = lines
  assert 'Traceback' not in proc.stderr and 'flags:' not in proc.stderr
  assert len(line) < 600 and '\\n' not in line and "\\'" not in line, line
  if module == 'var_jax.train':  # nothing written before the inputs are checked
    assert not (folder / 'w').exists()


def test_a_non_finite_loss_before_any_checkpoint_says_so():
  metrics_N = {'loss': np.array([2.0, np.nan, 2.0]), 'grad_norm': np.ones(3)}  # one call's 3 steps: 5, 6, 7
  with pytest.raises(errors.DivergedError, match='at step 6; stopping. No checkpoint was written yet'):
    loop._check_finite(metrics_N, 5, None)  # pylint: disable=protected-access
