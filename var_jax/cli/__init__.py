"""The command modules (`var_jax.cli.X`, one per command; `python -m var_jax.X` runs each through a shim), and
what every command-line entry point shares: flags parsed with one-line errors, typed exit codes.

`run(main, prog=...)` is `absl.app.run(main)` where a bad flag or `--config` override, and every
`var_jax.errors.VarJaxError` the command raises, print one line `PROG: error: MESSAGE` to stderr and exit with
the error's code (2 for a config or usage error, 3 for a diverged run, 4 for a data error; see
`var_jax.errors`). `--traceback` shows the full traceback instead. Modules that call `run` define their flags
inside their own `run()`, so importing them defines none.
"""
from __future__ import annotations

import logging as py_logging
import os
import sys
from typing import Callable, NoReturn, Sequence

from absl import app
from absl import flags
from absl import logging

from var_jax import errors


def fail(prog: str, message: str, code: int = errors.ConfigError.exit_code) -> NoReturn:
  """Prints `PROG: error: MESSAGE` (on one line) to stderr and exits with `code`."""
  sys.stderr.write(f'{prog}: error: {" ".join(str(message).split())}\n')
  sys.exit(code)


# Libraries whose INFO and WARNING records are chatter on a console (orbax's per-save and read-only notes, TFDS's
# "custom data configuration"); their errors still show. asyncio's records are leftovers of orbax's threads.
_CHATTY = ('/orbax/', '/tensorflow_datasets/')


def library_chatter(record: py_logging.LogRecord) -> bool:
  """Whether a log record is library chatter that the console does not show."""
  if f'{os.sep}asyncio{os.sep}' in record.pathname:
    return True
  return record.levelno < py_logging.ERROR and any(part in record.pathname for part in _CHATTY)


def _flag_error_line(e: Exception) -> str:
  """One line of a flag-parsing error: its first line, plus the last one when a config file raised."""
  lines = [line.strip() for line in str(e).splitlines() if line.strip()]
  return ' '.join(lines[:1] + lines[1:][-1:]) if lines else type(e).__name__


def _override_message(e: BaseException) -> str:
  """The text of an override error: ml_collections wraps a KeyError (whose str() is a repr) in an AttributeError."""
  while e.args and isinstance(e.args[0], BaseException):
    e = e.args[0]
  text = ' '.join(str(e.args[0]).split()) if e.args else type(e).__name__
  return f'unknown key {text}' if isinstance(e, KeyError) else text


def _parser(prog: str, rewrite: Callable[[list[str]], list[str]] | None):
  def parse(argv: Sequence[str]) -> list[str]:
    argv = list(argv) if rewrite is None else rewrite(list(argv))
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      fail(prog, _flag_error_line(e))
    except (AttributeError, KeyError, TypeError, ValueError) as e:
      # ml_collections raises these for `--config.no_such_key=...` and badly typed overrides.
      fail(prog, f'bad --config override: {_override_message(e)}')
  return parse


def run(main: Callable[[list[str]], object], *, prog: str,
        rewrite_argv: Callable[[list[str]], list[str]] | None = None) -> None:
  """Runs `main(argv)` under absl with var_jax's one-line errors and exit codes.

  `main` gets absl's argv (the program name, then positional arguments; `no_positional` refuses those).
  `rewrite_argv` may adjust the command line before parsing (e.g. accept dashed flag names).
  """
  if 'traceback' not in flags.FLAGS:
    flags.DEFINE_bool('traceback', False, 'Print the full traceback of an error instead of one line.')

  def wrapped(argv):
    logging.get_absl_handler().addFilter(lambda record: not library_chatter(record))
    try:
      return main(argv)
    except errors.VarJaxError as e:
      if flags.FLAGS.traceback:
        raise
      fail(prog, str(e), e.exit_code)

  app.run(wrapped, flags_parser=_parser(prog, rewrite_argv))


def config_file(name: str = 'config', required: bool = True):
  """The config of the config-file flag `--NAME` (ml_collections' DEFINE_config_file), or None when it is not
  given and not `required`; ConfigError when it is missing or its file does not exist."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  flag = flags.FLAGS[name]
  if flag.value is None:
    if required:
      raise errors.ConfigError(f'--{name} is required')
    return None
  path = config_flags.get_config_filename(flag).split(':', 1)[0]  # FILE[:ARG]
  if not os.path.isfile(path):
    raise errors.ConfigError(f'--{name}={path}: no such file')
  return flag.value


def no_positional(argv: Sequence[str]) -> None:
  """ConfigError for positional arguments a command does not take."""
  if len(argv) > 1:
    raise errors.ConfigError(f'unexpected arguments {list(argv[1:])}')
