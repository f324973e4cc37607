"""A run folder has one writer and one config: its lock, and the config check made before anything is written.

Lock. Process 0 holds an exclusive `fcntl.flock` on `<workdir>/LOCK` for the whole run; the file records the
holder's host, pid and start time. The kernel drops a flock when its process dies (SIGKILL and lost hosts
included), so a LOCK file that still names a holder but can be locked was left by a killed run: it is taken
over and the takeover logged. A clean exit empties the file. Where flock does not work (some NFS and FUSE
mounts answer ENOLCK or EOPNOTSUPP) the file is a lease instead: the holder rewrites its `heartbeat` every
HEARTBEAT_S seconds, and a lease is stale once that is LEASE_S old, or at once when it names a pid of this
host that is gone. A second run on a live folder stops before touching it with `errors.WorkdirBusyError`
(exit 5) naming the holder.

Config. `config.json` is the resolved config the folder was started with. A new run in that folder may differ
from it only in MAY_CHANGE (the length of the run, cadences, placement and reader settings); anything else is
refused with the differing keys listed, before any file is touched. A key the stored config lacks (added to
var_jax since) counts as its default. Derived values (`optim.warmup_steps`, `optim.total_steps` from `steps`, ...)
keep the stored run's, so `steps` past the run's `optim.total_steps` (where its schedule ends) is refused unless
`optim.total_steps` is given as well: the schedule is then recomputed over the new total (warmup kept).
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import shutil
import socket
import threading
import time
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from var_jax import errors
from var_jax.train import config as config_lib
from var_jax.train import rundir as rundir_lib

LOCK, CONFIG = rundir_lib.RunDir.LOCK, rundir_lib.RunDir.CONFIG  # (tests name them)
HEARTBEAT_S, LEASE_S = 10.0, 60.0
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
# Keys a resumed run may change: `prefix.*` covers a whole group.
MAY_CHANGE = ('steps', 'optim.total_steps', 'log.*', 'eval.every_steps', 'eval.batches', 'checkpoint.every_steps',
              'checkpoint.keep', 'checkpoint.keep_every', 'checkpoint.async_save', 'train.steps_per_call', 'mesh.*',
              'sharding.*', 'data.data_dir', 'data.num_threads', 'data.prefetch', 'data.worker_count')


# ---- the lock -------------------------------------------------------------------------------------------------


def _record() -> dict[str, Any]:
  started = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')
  return dict(host=socket.gethostname(), pid=os.getpid(), started=started, heartbeat=time.time())


def describe(holder: dict | None) -> str:
  """'host H pid P since T' of a lock record."""
  if not holder:
    return 'a run that has not written its name yet'
  return f'host {holder.get("host")} pid {holder.get("pid")} since {holder.get("started")}'


_read = rundir_lib.read_json


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _lease_live(holder: dict | None) -> bool:
  if not holder:
    return False
  if holder.get('host') == socket.gethostname():
    return _pid_alive(int(holder.get('pid', -1)))
  return time.time() - float(holder.get('heartbeat', 0)) < LEASE_S


def _busy(workdir: str, holder: dict | None) -> errors.WorkdirBusyError:
  return errors.WorkdirBusyError(f'{workdir} is in use by another run ({describe(holder)}; lock file '
                                 f'{rundir_lib.RunDir(workdir).lock}); wait for it to end or stop it')


class Lock:
  """The held lock of one run folder; `release()` (or process exit) frees it."""

  def __init__(self, path: str, fd: int | None, record: dict):
    self.path, self._fd, self.record = path, fd, record
    self._stop = threading.Event()
    self._thread = None
    if fd is None:  # a lease: keep it fresh
      self._thread = threading.Thread(target=self._heartbeat, daemon=True, name='var_jax workdir lease')
      self._thread.start()

  def _heartbeat(self):
    while not self._stop.wait(HEARTBEAT_S):
      self.record['heartbeat'] = time.time()
      _write_atomic(self.path, self.record)

  def release(self) -> None:
    self._stop.set()
    if self._fd is not None:
      os.ftruncate(self._fd, 0)
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None
    elif self._thread is not None:
      self._thread.join()
      self._thread = None
      if (_read(self.path) or {}).get('pid') == self.record['pid']:
        _write_atomic(self.path, None)


def _write_atomic(path: str, record: dict | None) -> None:
  rundir_lib.write_text(path, '' if record is None else json.dumps(record))


def _log_takeover(workdir: str, previous: dict | None) -> None:
  if previous:
    logging.warning('%s: taking over the lock of %s, which is no longer running', workdir, describe(previous))


def acquire(workdir: str) -> Lock:
  """Takes the lock of `workdir` (which exists); WorkdirBusyError naming the holder when a live run has it."""
  path = rundir_lib.RunDir(workdir).lock
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    os.close(fd)
    raise _busy(workdir, _read(path)) from None
  except OSError as e:
    os.close(fd)
    if e.errno not in _NO_LOCKS:
      raise
    return _acquire_lease(workdir, path)
  _log_takeover(workdir, _read(path))
  record = _record()
  os.ftruncate(fd, 0)
  os.pwrite(fd, json.dumps(record).encode(), 0)
  os.fsync(fd)
  return Lock(path, fd, record)


def _acquire_lease(workdir: str, path: str) -> Lock:
  previous = _read(path)
  if _lease_live(previous):
    raise _busy(workdir, previous)
  record = _record()
  _write_atomic(path, record)
  time.sleep(0.1)  # two runs that saw the same stale lease: the last writer wins, the other sees it here
  if (_read(path) or {}).get('pid') != record['pid'] or _read(path).get('host') != record['host']:
    raise _busy(workdir, _read(path))
  _log_takeover(workdir, previous)
  return Lock(path, None, record)


def holder(workdir: str) -> dict | None:
  """The record of the live run holding `workdir`'s lock ({} if it has not written it yet), or None."""
  path = rundir_lib.RunDir(workdir).lock
  if not os.path.exists(path):
    return None
  record = _read(path)
  fd = os.open(path, os.O_RDONLY)
  try:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
  except BlockingIOError:
    return record or {}
  except OSError as e:
    if e.errno not in _NO_LOCKS:
      raise
    return record if _lease_live(record) else None
  finally:
    os.close(fd)  # closing drops a shared lock taken by this probe
  return None


def claim(workdir: str) -> Lock | None:
  """Process 0 takes the lock; every process raises WorkdirBusyError when it is held elsewhere."""
  lock, busy = None, None
  if jax.process_index() == 0:
    try:
      lock = acquire(workdir)
    except errors.WorkdirBusyError as e:
      busy = e
  if jax.process_count() > 1:
    held = bool(multihost_utils.broadcast_one_to_all(np.int32(busy is not None)))
    if held and busy is None:
      busy = errors.WorkdirBusyError(f'{workdir} is in use by another run (see process 0)')
  if busy is not None:
    raise busy
  return lock


class SetupUndo:
  """What a run adds to its folder before training starts (the folder itself, LOCK, an empty checkpoints/,
  init.json), removed again when the run is refused (a `VarJaxError`) while it holds the lock and before it
  starts: a refused command leaves the folder as it found it. Use as an exit callback (`ExitStack.push`)."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self._before = set(os.listdir(workdir)) if os.path.isdir(workdir) else None
    self._armed = False

  def arm(self) -> None:
    """Call once the lock is held (never undo for a run refused because another holds it)."""
    self._armed = True

  def disarm(self) -> None:
    """Call once the run has started (its config is recorded): from then on its files are its own."""
    self._armed = False

  def __call__(self, exc_type, exc, tb) -> bool:
    del exc_type, tb
    if not (self._armed and isinstance(exc, errors.VarJaxError) and os.path.isdir(self.workdir)):
      return False
    if self._before is None:
      shutil.rmtree(self.workdir)
      return False
    for name in set(os.listdir(self.workdir)) - self._before:
      path = os.path.join(self.workdir, name)
      shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    return False


# ---- the config -----------------------------------------------------------------------------------------------


def _flat(tree: dict, prefix: str = '') -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def _may_change(key: str) -> bool:
  return any(key == k or (k.endswith('.*') and key.startswith(k[:-1])) for k in MAY_CHANGE)


def _set(cfg: ml_collections.ConfigDict, key: str, value: Any) -> None:
  *groups, leaf = key.split('.')
  for g in groups:
    cfg = cfg[g]
  with cfg.ignore_type():
    cfg[leaf] = tuple(value) if isinstance(value, list) else value


def reconcile(cfg: ml_collections.ConfigDict, config: Any, stored_path: str) -> list[str]:
  """Checks the resolved `cfg` (from the raw `config`) against the stored config.json of a run folder.

  Returns the changed MAY_CHANGE keys as 'key: old -> new'; keeps the stored values of derived keys in `cfg`.
  ConfigError listing the keys for any other difference.
  """
  stored = _flat(json.loads(config_lib.load_json(stored_path).to_json()))
  new = _flat(json.loads(cfg.to_json()))
  raw = _flat(json.loads(config_lib.merged(config).to_json()))
  defaults = _flat(json.loads(config_lib.base_config(cfg.task).to_json()))
  changed, refused = [], []
  for key in sorted(set(new) | set(stored)):
    old = stored.get(key, defaults.get(key))
    if new.get(key) == old:
      continue
    if key in new and raw.get(key) is None and key in stored:
      _set(cfg, key, old)  # derived (e.g. warmup from steps): the run keeps its own
    elif _may_change(key):
      changed.append(f'{key}: {old!r} -> {new.get(key)!r}')
    else:
      refused.append(f'{key} ({old!r} -> {new.get(key)!r})')
  if refused:
    raise errors.ConfigError(
        f'{stored_path}: this run folder belongs to another config; differing keys: {", ".join(refused)}. '
        f'Only {", ".join(MAY_CHANGE)} may change on resume; use a new --workdir for a new config')
  _check_schedule_covers(cfg, stored_path)
  return changed


def _check_schedule_covers(cfg: ml_collections.ConfigDict, stored_path: str) -> None:
  """ConfigError when `steps` goes past the step where the run's learning-rate schedule ends."""
  total = cfg.optim.total_steps
  if cfg.steps > total:
    raise errors.ConfigError(
        f'steps={cfg.steps} is past optim.total_steps={total}, where the learning-rate schedule of the run in '
        f'{os.path.dirname(stored_path) or "."} ends; to extend the run, also give '
        f'--config.optim.total_steps={cfg.steps} (or more): its schedule is then recomputed over that many steps')
