"""The task registry: `config.task` names the module whose `TASK` class the engine trains.

Adding a task is one module in this package (a `var_jax.train.task.Task` subclass exported as `TASK`) and one
line in `_MODULES`. `register` adds a task class at run time (tests register toy tasks this way).
"""
from __future__ import annotations

import importlib

from var_jax import errors

_MODULES = {
    'var': 'var_jax.train.tasks.var',
    'tokenizer': 'var_jax.train.tasks.tokenizer',
    'classifier': 'var_jax.train.tasks.classifier',
    'next_token': 'var_jax.train.tasks.next_token',
    'maskgit': 'var_jax.train.tasks.maskgit',
}
_REGISTERED: dict[str, type] = {}


def names() -> list[str]:
  return sorted(set(_MODULES) | set(_REGISTERED))


def register(task_cls: type) -> type:
  """Registers a Task subclass under its `name` (usable as a decorator)."""
  _REGISTERED[task_cls.name] = task_cls
  return task_cls


def get(name: str) -> type:
  """The Task class registered as `name`; ConfigError naming the known tasks otherwise."""
  if name in _REGISTERED:
    return _REGISTERED[name]
  if name not in _MODULES:
    raise errors.ConfigError(f'config: task={name!r} is not a known task; expected one of {names()}')
  return importlib.import_module(_MODULES[name]).TASK
