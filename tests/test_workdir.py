"""One writer and one config per run folder (`var_jax.train.workdir`): the lock, its lease fallback, the config
check on resume, and the sweep skipping live runs."""
import errno
import fcntl
import hashlib
import json
import logging
import os
import pathlib
import socket
import subprocess
import sys
import time

from conftest import REPO
from conftest import load_experiment
import jax
import ml_collections
import pytest

from var_jax import errors
from var_jax import paths
from var_jax.scaling import sweep
from var_jax.train import config as config_lib
from var_jax.train import loop
from var_jax.train import workdir as workdir_lib


def _dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, '-c', 'pass'])
  proc.wait()
  return proc.pid


def _write_lock(folder, **record):
  (pathlib.Path(folder) / workdir_lib.LOCK).write_text(json.dumps(record))


def test_a_second_writer_is_refused_naming_the_holder_and_a_released_lock_is_free(tmp_path):
  lock = workdir_lib.acquire(str(tmp_path))
  assert workdir_lib.holder(str(tmp_path))['pid'] == os.getpid()
  with pytest.raises(errors.WorkdirBusyError, match=f'pid {os.getpid()}') as e:
    workdir_lib.acquire(str(tmp_path))
  assert e.value.exit_code == 5 and socket.gethostname() in str(e.value)
  lock.release()
  assert workdir_lib.holder(str(tmp_path)) is None
  workdir_lib.acquire(str(tmp_path)).release()


def test_a_stale_lock_of_a_killed_run_is_taken_over_and_logged(tmp_path, caplog):
  dead = _dead_pid()
  _write_lock(tmp_path, host=socket.gethostname(), pid=dead, started='2026-01-01T00:00:00Z')
  assert workdir_lib.holder(str(tmp_path)) is None  # a record, but nobody holds the flock
  with caplog.at_level(logging.WARNING):
    lock = workdir_lib.acquire(str(tmp_path))
  assert any(f'pid {dead}' in r.getMessage() and 'taking over' in r.getMessage() for r in caplog.records)
  assert json.loads((tmp_path / workdir_lib.LOCK).read_text())['pid'] == os.getpid()
  lock.release()


@pytest.fixture
def no_flock(monkeypatch):
  """A filesystem where flock fails (as some NFS mounts do): the lock becomes a lease."""
  def flock(fd, op):
    raise OSError(errno.ENOLCK, 'No locks available')
  monkeypatch.setattr(fcntl, 'flock', flock)


def test_lease_where_locks_do_not_work(tmp_path, no_flock):
  lock = workdir_lib.acquire(str(tmp_path))
  with pytest.raises(errors.WorkdirBusyError, match=f'pid {os.getpid()}'):
    workdir_lib.acquire(str(tmp_path))
  assert workdir_lib.holder(str(tmp_path))['pid'] == os.getpid()
  lock.release()
  assert workdir_lib.holder(str(tmp_path)) is None
  # Another host: live while its heartbeat is fresh, stale after LEASE_S.
  _write_lock(tmp_path, host='elsewhere', pid=1, started='x', heartbeat=time.time())
  with pytest.raises(errors.WorkdirBusyError, match='host elsewhere pid 1'):
    workdir_lib.acquire(str(tmp_path))
  _write_lock(tmp_path, host='elsewhere', pid=1, started='x', heartbeat=time.time() - workdir_lib.LEASE_S - 1)
  workdir_lib.acquire(str(tmp_path)).release()
  # This host: stale as soon as its pid is gone.
  _write_lock(tmp_path, host=socket.gethostname(), pid=_dead_pid(), started='x', heartbeat=time.time())
  workdir_lib.acquire(str(tmp_path)).release()


def test_unusable_workdirs_are_config_errors(tmp_path):
  (tmp_path / 'file').write_text('')
  with pytest.raises(errors.ConfigError, match='not a folder'):
    paths.check_folder(str(tmp_path / 'file'), '--workdir')
  with pytest.raises(errors.ConfigError, match='not a folder'):
    paths.check_folder(str(tmp_path / 'file' / 'run'), '--workdir')
  paths.check_folder(str(tmp_path / 'new' / 'run'), '--workdir')
  assert not (tmp_path / 'new').exists()


def _tiny(**overrides):
  c = load_experiment('smoke', 'tokens')
  c.model.update(dict(depth=1, patch_nums=(1, 2), embed_dim=32, num_heads=2))
  c.tokenizer.patch_nums = (1, 2)
  c.update(dict(steps=2))
  c.checkpoint.update(dict(every_steps=2, async_save=False))
  c.eval.batches = 1
  c.log.every_steps = 1
  for key, value in overrides.items():
    group, leaf = key.split('.') if '.' in key else (None, key)
    (c[group] if group else c)[leaf] = value
  return c


def test_reconcile_allows_the_listed_keys_keeps_derived_ones_and_lists_the_others(tmp_path):
  stored = config_lib.resolve(_tiny(steps=100), 1)
  path = tmp_path / 'config.json'
  path.write_text(stored.to_json())
  # More steps, a schedule that spans them and another cadence: allowed; warmup (2% of the total when unset)
  # keeps the stored run's value.
  new = _tiny(steps=400, **{'log.every_steps': 7, 'optim.total_steps': 400})
  cfg = config_lib.resolve(new, 1)
  changed = workdir_lib.reconcile(cfg, new, str(path))
  assert sorted(c.split(':')[0] for c in changed) == ['log.every_steps', 'optim.total_steps', 'steps']
  assert cfg.optim.warmup_steps == stored.optim.warmup_steps == 2
  new = _tiny(steps=100, **{'model.depth': 3, 'optim.b2': 0.9})
  with pytest.raises(errors.ConfigError, match=r'model\.depth \(1 -> 3\).*optim\.b2 \(0\.95 -> 0\.9\)'):
    workdir_lib.reconcile(config_lib.resolve(new, 1), new, str(path))
  # A key that the stored config lacks (added to var_jax later) counts as its default.
  old = json.loads(stored.to_json())
  del old['optim']['eps']
  path.write_text(json.dumps(old))
  workdir_lib.reconcile(config_lib.resolve(_tiny(steps=100), 1), _tiny(steps=100), str(path))


def _checksums(folder):
  return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
          for p in sorted(pathlib.Path(folder).rglob('*')) if p.is_file() and p.name != workdir_lib.LOCK}


def test_a_finished_run_folder_keeps_its_config(tmp_path):
  run = str(tmp_path / 'run')
  devices = jax.devices()[:1]
  first = loop.train(_tiny(), run, devices)
  assert first['step'] == 2
  before = _checksums(run)
  assert 'DONE' in before and any(k.startswith('checkpoints/2/') for k in before)
  # The same config again: nothing to do, nothing touched.
  assert loop.train(_tiny(), run, devices)['step'] == 2
  assert _checksums(run) == before
  # Another model: refused before anything is touched.
  with pytest.raises(errors.ConfigError, match=r'model\.depth \(1 -> 2\)'):
    loop.train(_tiny(**{'model.depth': 2}), run, devices)
  assert _checksums(run) == before
  # More steps on a schedule that spans them: the run continues from its checkpoint.
  more = loop.train(_tiny(steps=3, **{'optim.total_steps': 3}), run, devices)
  assert more['step'] == 3
  records = [json.loads(l) for l in (pathlib.Path(run) / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in records if r['split'] == 'train'] == [1, 2, 3]
  assert json.loads((pathlib.Path(run) / 'config.json').read_text())['steps'] == 3
  # Without its config.json, a checkpoint of another model is an error, not a corrupt step.
  (pathlib.Path(run) / 'config.json').unlink()
  before = _checksums(run)
  with pytest.raises(errors.WeightsError, match='does not fit the model'):
    loop.train(_tiny(steps=4, **{'model.depth': 2}), run, devices)
  assert _checksums(run) == before
  assert not (pathlib.Path(run) / 'corrupt_checkpoints').exists()


def test_more_steps_than_the_schedule_spans_are_refused_and_a_longer_schedule_extends_the_run(tmp_path):
  run, devices = str(tmp_path / 'run'), jax.devices()[:1]
  loop.train(_tiny(steps=6, **{'eval.every_steps': 3}), run, devices)
  before = _checksums(run)
  with pytest.raises(errors.ConfigError,
                     match=r'steps=12 is past optim\.total_steps=6.* --config\.optim\.total_steps=12'):
    loop.train(_tiny(steps=12), run, devices)
  assert _checksums(run) == before
  loop.train(_tiny(steps=12, **{'optim.total_steps': 12, 'eval.every_steps': 3}), run, devices)
  records = [json.loads(l) for l in (pathlib.Path(run) / 'metrics.jsonl').read_text().splitlines()]
  lrs = [r['lr'] for r in records if r['split'] == 'train']
  assert len(lrs) == 12 and min(lrs) > 0
  evals = [r['loss'] for r in records if r['split'] == 'eval']
  assert len(evals) == 4 and evals[-1] <= evals[1]  # step 12 against the end of the first schedule, step 6
  assert json.loads((pathlib.Path(run) / 'config.json').read_text())['optim']['total_steps'] == 12


def test_a_run_refused_before_it_starts_leaves_the_folder_as_it_found_it(tmp_path):
  devices = jax.devices()[:1]
  with pytest.raises(errors.ConfigError, match='none.npz'):
    loop.train(_tiny(**{'init.path': str(tmp_path / 'none.npz')}), str(tmp_path / 'new'), devices)
  assert not (tmp_path / 'new').exists()
  run = tmp_path / 'run'
  run.mkdir()
  (run / 'notes.txt').write_text('mine')
  (run / workdir_lib.CONFIG).write_text(config_lib.resolve(_tiny(**{'model.depth': 2}), 1).to_json())
  with pytest.raises(errors.ConfigError, match=r'model\.depth \(2 -> 1\)'):
    loop.train(_tiny(), str(run), devices)
  assert sorted(p.name for p in run.iterdir()) == [workdir_lib.CONFIG, 'notes.txt']


def test_the_trainer_on_a_locked_folder_stops_at_once_naming_the_holder(tmp_path):
  run = tmp_path / 'run'
  run.mkdir()
  lock = workdir_lib.acquire(str(run))
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=1')
  proc = subprocess.run([sys.executable, '-m', 'var_jax.train', '--config=experiments/smoke.py:tokens',
                         f'--workdir={run}'], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  lock.release()
  assert proc.returncode == errors.WorkdirBusyError.exit_code, proc.stderr[-3000:]
  [line] = [l for l in proc.stderr.splitlines() if l.startswith('var-train: error:')]
  assert f'pid {os.getpid()}' in line and 'Traceback' not in proc.stderr
  assert sorted(p.name for p in run.iterdir()) == [workdir_lib.LOCK]


def test_the_sweep_does_not_start_a_run_whose_lock_is_live(tmp_path):
  base = config_lib.base_config()
  base.data.name = 'synthetic_tokens'
  spec = ml_collections.ConfigDict(dict(base=base))
  spec.axes = [('model.depth', (1, 2))]
  runs = sweep.expand(spec)
  root = str(tmp_path)
  live = sweep.write_run_files(root, runs[0])
  lock = workdir_lib.acquire(live)
  assert [r.run_id for r in sweep.pending(root, runs, retry_failed=False)] == [runs[1].run_id]
  lock.release()
  assert len(sweep.pending(root, runs, retry_failed=False)) == 2
