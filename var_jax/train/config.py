"""Training configuration: every key with its default, and validation before any XLA work.

A config is the common groups below plus the groups of its task (`config.task`, default 'var'; see
`var_jax.train.tasks`). Experiments start from `base_config(task)` and override what they need;
`resolve(config, ...)` rejects unknown keys, out-of-range values (learning rate, weight decay, betas, clip;
`patch_nums` order first), a missing dataset folder and inconsistent settings with one-line `ConfigError`s and fills
derived values (the mesh's -1 axis, the eval batch, the peak learning rate, warmup), then lets the task do the
same for its own keys.
"""
from __future__ import annotations

import json
import math
from typing import Any

import ml_collections
from ml_collections import config_dict

from var_jax import errors
from var_jax import sharding
from var_jax.data import config as data_config
from var_jax.train import tasks

SCHEDULES = ('lin0', 'lin', 'lin00', 'cos')
DEFAULT_TASK = 'var'


def _placeholder(kind):
  # A None default that can still be overridden from the command line with a typed value.
  return config_dict.placeholder(kind)


def common_config() -> ml_collections.ConfigDict:
  """The keys every task has, with defaults (the official VAR recipe where one exists)."""
  c = ml_collections.ConfigDict()
  c.task = DEFAULT_TASK
  c.seed = 0
  c.steps = 1000
  c.batch_size = 256  # global

  c.optim = ml_collections.ConfigDict(dict(
      base_lr=1e-4,              # peak lr = base_lr * batch_size / 256 ...
      lr=_placeholder(float),    # ... unless the peak is given here
      b1=0.9, b2=0.95, eps=1e-8,
      weight_decay=0.05,
      weight_decay_end=_placeholder(float),  # cosine ramp to this value; None keeps it constant
      schedule='lin0',           # one of SCHEDULES
      total_steps=_placeholder(int),   # steps the schedules span (official max_it); None: steps
      warmup_steps=_placeholder(int),  # None: 2% of total_steps (official wp = ep/50)
      warmup_start=0.005,        # lr at step 0 as a fraction of the peak (official wp0)
      final_lr_frac=0.01,        # lr at the last step as a fraction of the peak (official wpe)
      grad_clip=2.0))            # <= 0 disables clipping

  c.train = ml_collections.ConfigDict(dict(
      steps_per_call=1))  # optimizer steps per compiled call (k): eval and checkpoint intervals are multiples of k
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.sharding = ml_collections.ConfigDict(dict(
      rules=_placeholder(tuple),   # None: var_jax.sharding.DEFAULT_RULES
      fsdp_min_size=2**16))        # parameters this large must be sharded when mesh.fsdp > 1

  c.checkpoint = ml_collections.ConfigDict(dict(
      every_steps=1000, keep=3,
      keep_every=_placeholder(int),  # also keep every K-th step permanently
      async_save=True))
  c.log = ml_collections.ConfigDict(dict(
      every_steps=50,
      peak_tflops=_placeholder(float)))  # per-device peak for MFU; None: known accelerator table
  c.eval = ml_collections.ConfigDict(dict(
      every_steps=1000, batches=10,
      batch_size=_placeholder(int)))  # None: same as batch_size
  c.data = data_config.default_config()
  return c


def base_config(task: str = DEFAULT_TASK) -> ml_collections.ConfigDict:
  """Every key of `task` with its default: the common groups updated with the task's."""
  c = common_config()
  c.update(tasks.get(task).default_config())
  c.task = task
  return c


def _unknown_keys(cfg: Any, base: Any, prefix: str = '') -> list[str]:
  unknown = []
  for key in cfg.keys():
    name = f'{prefix}{key}'
    if key not in base:
      value = cfg[key]
      # A whole unknown group is named by its first key, as the user wrote it (model.depth, not model).
      unknown += (_unknown_keys(value, {}, name + '.') if isinstance(value, (ml_collections.ConfigDict, dict))
                  and len(value) else [name])
    elif isinstance(base[key], ml_collections.ConfigDict):
      if not isinstance(cfg[key], (ml_collections.ConfigDict, dict)):
        raise errors.ConfigError(f'config: {name} must be a group of keys, got {cfg[key]!r}')
      unknown += _unknown_keys(cfg[key], base[key], name + '.')
  return unknown


def merged(config: Any) -> ml_collections.ConfigDict:
  """`config` over `base_config(config.task)`; ConfigError for a key the task does not define."""
  base = base_config(config.get('task', DEFAULT_TASK))
  unknown = _unknown_keys(config, base)
  if unknown:
    more = f' (and {len(unknown) - 1} more)' if len(unknown) > 1 else ''
    raise errors.ConfigError(f'config: unknown key {unknown[0]!r}{more} for task={base.task!r}; see '
                             f'{tasks.get(base.task).__module__} and var_jax/train/config.py for the known keys')
  base.update(ml_collections.ConfigDict(config).to_dict())
  return ml_collections.ConfigDict(base.to_dict())


def _check_optim(o: ml_collections.ConfigDict) -> None:
  finite = lambda x: isinstance(x, (int, float)) and math.isfinite(x)
  errors.check_config(finite(o.lr) and o.lr > 0, f'optim.lr={o.lr} must be a positive number (or set optim.base_lr)')
  for key in ('weight_decay', 'weight_decay_end'):
    errors.check_config(finite(o[key]) and o[key] >= 0, f'optim.{key}={o[key]} must be >= 0')
  for key in ('b1', 'b2'):
    errors.check_config(finite(o[key]) and 0 <= o[key] < 1, f'optim.{key}={o[key]} must be in [0, 1)')
  errors.check_config(finite(o.eps) and o.eps > 0, f'optim.eps={o.eps} must be positive')
  errors.check_config(finite(o.grad_clip), f'optim.grad_clip={o.grad_clip} must be a number (<= 0 disables clipping)')
  for key in ('warmup_start', 'final_lr_frac'):
    errors.check_config(finite(o[key]) and 0 <= o[key] <= 1, f'optim.{key}={o[key]} must be in [0, 1]')


def resolve(config: Any, num_devices: int, process_count: int = 1) -> ml_collections.ConfigDict:
  """Validated copy of `config` with derived values filled in.

  Raises ConfigError (one line, naming the key) for unknown keys, a mesh that does not match `num_devices`,
  a batch that does not split over the data-parallel devices or processes, and whatever the task refuses.
  """
  c = merged(config)
  for group in ('model', 'tokenizer'):  # first: other checks (image size, FLOPs) assume increasing scales
    p = tuple(c[group].get('patch_nums') or ()) if group in c else ()
    errors.check_config(all(a < b for a, b in zip(p, p[1:])) and all(n > 0 for n in p),
           f'{group}.patch_nums={p} must be increasing positive scale sizes')
  errors.check_config(c.steps > 0, f'steps must be positive, got {c.steps}')
  data_config.check(c.data)
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = sharding.resolve_mesh_shape(
      [c.mesh[a] for a in sharding.MESH_AXES], num_devices)
  dp = c.mesh.data * c.mesh.fsdp
  if c.eval.batch_size is None:
    c.eval.batch_size = c.batch_size
  for key, batch in (('batch_size', c.batch_size), ('eval.batch_size', c.eval.batch_size)):
    errors.check_config(batch > 0 and batch % dp == 0, f'{key}={batch} is not divisible by the data-parallel size {dp} '
           f'(mesh.data={c.mesh.data} x mesh.fsdp={c.mesh.fsdp})')
    errors.check_config(batch % process_count == 0, f'{key}={batch} is not divisible by the {process_count} processes')
  sharding.rules_from_config(c.sharding.rules)

  o = c.optim
  errors.check_config(o.schedule in SCHEDULES, f'optim.schedule={o.schedule!r}; expected one of {SCHEDULES}')
  if o.lr is None:
    o.lr = o.base_lr * c.batch_size / 256
  if o.total_steps is None:
    o.total_steps = c.steps
  errors.check_config(o.total_steps >= c.steps, f'optim.total_steps={o.total_steps} must be at least steps={c.steps}')
  if o.warmup_steps is None:
    o.warmup_steps = round(o.total_steps / 50)
  if o.weight_decay_end is None:
    o.weight_decay_end = o.weight_decay
  errors.check_config(0 <= o.warmup_steps < o.total_steps,
         f'optim.warmup_steps={o.warmup_steps} must be in [0, optim.total_steps={o.total_steps})')
  _check_optim(o)
  for group in ('checkpoint', 'log', 'eval'):
    errors.check_config(c[group].every_steps > 0, f'{group}.every_steps must be positive, got {c[group].every_steps}')
  k = c.train.steps_per_call
  errors.check_config(isinstance(k, int) and k > 0, f'train.steps_per_call={k} must be a positive integer')
  for group in ('checkpoint', 'eval'):
    errors.check_config(c[group].every_steps % k == 0,
        f'{group}.every_steps={c[group].every_steps} must be a multiple of '
           f'train.steps_per_call={k} (state exists only between calls)')
  errors.check_config(c.checkpoint.keep > 0, f'checkpoint.keep must be positive, got {c.checkpoint.keep}')
  errors.check_config(c.eval.batches > 0, f'eval.batches={c.eval.batches} must be positive')
  tasks.get(c.task).resolve(c)
  return c


def load_json(path: str) -> ml_collections.ConfigDict:
  """A config written as JSON (a run's config.json): lists come back as the tuples configs use."""
  def tuples(x):
    if isinstance(x, dict):
      return {k: tuples(v) for k, v in x.items()}
    return tuple(tuples(v) for v in x) if isinstance(x, list) else x

  try:
    with open(path) as f:
      return ml_collections.ConfigDict(tuples(json.load(f)))
  except FileNotFoundError:
    raise errors.ConfigError(f'{path}: no such file') from None
  except ValueError as e:
    raise errors.ConfigError(f'{path}: not a JSON config ({e})') from None
