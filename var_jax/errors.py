"""Typed errors that cross layers, each with the exit code the command-line entry points give it.

A library raises one of these with a one-line message naming the key, flag or file at fault and what was
expected; `var_jax.cli` prints that line and exits with `exit_code`. Callers branch on the type or the exit
code, never on the message text. Every class is also a `ValueError` (or `FloatingPointError`), so code that
catches the built-in type keeps working.

| exit code | type            | meaning                                                                |
| --------- | --------------- | ---------------------------------------------------------------------- |
| 1         | (anything else) | a bug: the traceback is printed                                        |
| 2         | ConfigError     | a config key or value, a flag, an input file, or a missing optional package |
| 3         | DivergedError   | training stopped on a non-finite loss; the last good checkpoint is kept |
| 4         | DataError       | the dataset cannot be opened or read as configured                     |
| 5         | WorkdirBusyError| another live run holds the run folder's lock (the holder is named)     |
| 6         | RunsFailedError | a sweep ended with failed or diverged runs (the message names them)    |
"""
from __future__ import annotations


def check_config(ok: bool, message: str) -> None:
  """ConfigError 'config: MESSAGE' unless `ok`: how config checks are written, one condition a line."""
  if not ok:
    raise ConfigError(f'config: {message}')


class VarJaxError(Exception):
  """Base of the errors a user can fix; `exit_code` is what the entry points exit with."""
  exit_code = 1


class ConfigError(VarJaxError, ValueError):
  """A config key or value, a command-line flag, or an input file is not what is expected."""
  exit_code = 2


class WeightsError(ConfigError):
  """A weights file (state dict, tokenizer folder, checkpoint) does not fit the model or cannot be read."""


class MissingDependencyError(ConfigError, ImportError):
  """An optional package (torch, for .pth files) is needed for what was asked; the message says which."""


class DivergedError(VarJaxError, FloatingPointError):
  """A non-finite loss or gradient norm: the run stopped without checkpointing the bad state."""
  exit_code = 3


class DataError(VarJaxError, ValueError):
  """A dataset cannot be opened or read as the `data` config describes."""
  exit_code = 4


class WorkdirBusyError(VarJaxError):
  """The run folder is locked by another live run (`var_jax.train.workdir`); the message names its host and pid."""
  exit_code = 5


class RunsFailedError(VarJaxError):
  """A sweep ended with runs recorded as failed or diverged (`var_jax.scaling.sweep`); the message names them."""
  exit_code = 6
