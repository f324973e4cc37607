"""A run folder's layout, owned by one class: every reader and writer of a training run goes through `RunDir`.

  LOCK                  the one writer (`var_jax.train.workdir`): host, pid, start time
  config.json           the resolved config the run was started with (`var_jax.train.workdir.reconcile`)
  init.json             what a fine-tuning run started from (`Task.start_params`), when it did
  checkpoints/          orbax steps (`var_jax.train.checkpoint`); corrupt_checkpoints/ holds unreadable ones
  metrics.jsonl, tb/    one JSON per logged step and split; TensorBoard
  DONE                  the JSON summary, once the run reached its last step
  run_config.json/.py   the sweep runner's config of the run and the file `var_jax.train` reads (scaling.sweep)
  train.log, ERROR      the sweep runner's log of the trainer and its record of a failed run
  quality/, QUALITY_ERROR, quality.log   `var_jax.evaluate` of a finished run, as the sweep asks for it

Reading never raises for a missing or half-written JSON file: it is None.
"""
from __future__ import annotations

import json
import os
from typing import Any

from var_jax import errors


def read_json(path: str) -> Any:
  """The JSON in `path`, or None when the file is absent or unreadable (e.g. half written or empty)."""
  try:
    with open(path) as f:
      return json.loads(f.read() or 'null')
  except (OSError, ValueError):
    return None


def write_text(path: str, text: str) -> None:
  """Writes `path` atomically (a temporary file beside it, then a rename)."""
  tmp = f'{path}.{os.getpid()}.tmp'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


def write_json(path: str, record: Any) -> None:
  write_text(path, json.dumps(record, indent=1, default=list))


class _Entry:
  """A class attribute that reads as the path of the entry `name` in the instance's folder."""

  def __init__(self, name: str):
    self.name = name

  def __get__(self, run, owner=None):
    return self if run is None else os.path.join(run.path, self.name)


class RunDir:
  """The paths of one run folder and the reading and writing of its small files."""

  CONFIG, INIT, DONE, LOCK, METRICS, TB = 'config.json', 'init.json', 'DONE', 'LOCK', 'metrics.jsonl', 'tb'
  CHECKPOINTS, CORRUPT = 'checkpoints', 'corrupt_checkpoints'
  RUN_CONFIG_JSON, RUN_CONFIG_PY, LOG, ERROR = 'run_config.json', 'run_config.py', 'train.log', 'ERROR'
  QUALITY, QUALITY_ERROR, QUALITY_LOG, QUALITY_METRICS = 'quality', 'QUALITY_ERROR', 'quality.log', 'metrics.json'

  def __init__(self, path: str | os.PathLike):
    self.path = os.fspath(path)

  def __fspath__(self) -> str:
    return self.path

  def __repr__(self) -> str:
    return f'RunDir({self.path!r})'

  def join(self, name: str) -> str:
    return os.path.join(self.path, name)

  # ---- paths --------------------------------------------------------------------------------------

  config, init, done_path, lock, metrics, tb = (_Entry(n) for n in (CONFIG, INIT, DONE, LOCK, METRICS, TB))
  run_config_json, run_config_py, log, error = (_Entry(n) for n in (RUN_CONFIG_JSON, RUN_CONFIG_PY, LOG, ERROR))
  quality, quality_error, quality_log = (_Entry(n) for n in (QUALITY, QUALITY_ERROR, QUALITY_LOG))
  quality_metrics = _Entry(os.path.join(QUALITY, QUALITY_METRICS))

  @property
  def checkpoints(self) -> str:
    """Absolute: orbax wants one."""
    return os.path.join(os.path.abspath(self.path), self.CHECKPOINTS)

  @property
  def corrupt_checkpoints(self) -> str:
    return os.path.join(os.path.abspath(self.path), self.CORRUPT)

  # ---- what the folder holds ----------------------------------------------------------------------

  def has_config(self) -> bool:
    return os.path.exists(self.config)

  def has_checkpoints(self) -> bool:
    return os.path.isdir(self.checkpoints)

  def started(self) -> bool:
    """Whether a run has left metrics or checkpoints here."""
    return os.path.exists(self.metrics) or self.has_checkpoints()

  def checked_config(self) -> str:
    """The path of the run's config (`var_jax.train.config.load_json` reads it); ConfigError when the folder is
    not a training run."""
    if not self.has_config():
      raise errors.ConfigError(f'{self.path}: not a training workdir (no {self.CONFIG})')
    return self.config

  def config_json(self) -> dict | None:
    """config.json as plain JSON (no checks), or None."""
    return read_json(self.config)

  def write_config(self, cfg) -> None:
    """Writes a resolved ConfigDict."""
    write_text(self.config, cfg.to_json(indent=2))

  def done(self) -> dict | None:
    """The DONE summary, or None (absent or unreadable)."""
    return read_json(self.done_path) or None

  def write_done(self, summary: dict) -> None:
    write_json(self.done_path, summary)

  def remove_done(self) -> None:
    os.remove(self.done_path)

  def init_record(self) -> dict | None:
    """What a fine-tuning run started from (init.json), or None."""
    return read_json(self.init)

  def write_init(self, record: dict) -> None:
    write_json(self.init, record)

  def error_record(self) -> dict | None:
    return read_json(self.error)

  def quality_record(self) -> dict | None:
    return read_json(self.quality_metrics)
