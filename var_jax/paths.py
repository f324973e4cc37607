"""Output folders checked where they enter, before any work: a file where a folder is needed is refused.

Layer 1 (beside `errors`): commands and the trainer check their output folders here without importing each
other.
"""
from __future__ import annotations

import os

from var_jax import errors


def check_folder(path: str, flag: str) -> None:
  """ConfigError naming `flag` unless `path` is (or can be made) a writable folder; creates nothing."""
  existing = os.path.abspath(path)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if existing == os.path.abspath(path) and not os.path.isdir(existing):
    raise errors.ConfigError(f'{flag}: {path} exists and is not a folder')
  if not os.path.isdir(existing):
    raise errors.ConfigError(f'{flag}: {path} cannot be made: {existing} is not a folder')
  if not os.access(existing, os.W_OK | os.X_OK):
    raise errors.ConfigError(f'{flag}: {existing} is not writable')
