"""Fine-tuning start points: a VAR run's params taken from `init.path` before step 0.

`init.path` is an official VAR state dict (`.pth`/`.npz`, e.g. the released `var_d16.pth`) or a var_jax run
folder (its newest checkpoint). Either way the source goes through the official layout, so a scanned run can
start an unrolled one and back. Only params are taken (the optimizer state is fresh). A source trained on a
different number of classes gives everything but `class_emb`, which the run initialises afresh; any other
difference of shape is refused with the keys that differ.
"""
from __future__ import annotations

import os
from typing import Any

from absl import logging
import jax
import numpy as np

from var_jax import errors
from var_jax.models import var as var_lib
from var_jax.train import checkpoint
from var_jax.train import config as config_lib
from var_jax.train import rundir as rundir_lib
from var_jax.weights import state_dict as sd
from var_jax.weights import var as var_weights

# Params a change of `model.num_classes` re-initialises (the class embedding, one row per class + 1).
CLASS_KEYS = ('class_emb',)


def _source_state_dict(path: str) -> tuple[sd.StateDict, str]:
  """(official state dict, what it is) of a state-dict file or a var_jax run folder."""
  if os.path.isdir(path):
    cfg = config_lib.load_json(rundir_lib.RunDir(path).checked_config())
    if cfg.get('task', config_lib.DEFAULT_TASK) != 'var':
      raise errors.ConfigError(f'init.path={path}: a task={cfg.get("task")!r} run, not a VAR run')
    try:
      model = var_lib.VAR(**var_lib.resolve(cfg.model))
    except errors.ConfigError as e:
      raise errors.ConfigError(f'init.path={path}: {e}') from None
    params, step = checkpoint.restore_params(path)
    checkpoint.check_params(params, var_weights.param_shapes(model), f'init.path={path} step {step}')
    return var_weights.to_state_dict(params, model), f'var_jax run step {step}'
  if not os.path.exists(path):
    raise errors.ConfigError(f'init.path={path}: no such state-dict file or run folder')
  return sd.read_state_dict(path), 'official state dict'


def _source_model(state_dict: sd.StateDict, model: var_lib.VAR, path: str) -> var_lib.VAR:
  """`model` with the architecture the state dict records (layout, dtype and attention kept)."""
  src = var_weights.config_from_state_dict(state_dict, what=path)
  if 'num_heads' not in src:  # recorded by attn_l2_norm checkpoints only
    src['num_heads'] = model.num_heads if src['embed_dim'] == model.embed_dim else max(src['embed_dim'] // 64, 1)
  return model.clone(**src)


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  return {'/'.join(k): tuple(np.shape(v)) for k, v in sd.flat_leaves(tree).items()}


def load(path: str, model: var_lib.VAR, abstract_params: Any) -> tuple[dict, dict]:
  """(params to start from, record) for `model`, whose params look like `abstract_params`.

  The params lack the CLASS_KEYS when the source has another number of classes (the caller initialises
  them). ConfigError listing the keys for any other mismatch. The record (JSON) says what was loaded.
  """
  state_dict, kind = _source_state_dict(path)
  src_model = _source_model(state_dict, model, path)
  params = var_weights.from_state_dict(state_dict, src_model, what=f'init.path={path}')
  want, got = _shapes(abstract_params), _shapes(params)
  reinit = [k for k in CLASS_KEYS if k in want and want[k][1:] == got.get(k, ())[1:] and want[k] != got[k]]
  bad = sorted(k for k in set(want) | set(got) if k not in reinit and want.get(k) != got.get(k))
  if bad:
    detail = [f'{k} {got.get(k, "absent")} vs {want.get(k, "absent")}' for k in bad]
    raise errors.ConfigError(f'init.path={path}: {len(bad)} params differ from the model (source vs run): '
                             f'{sd.listed(detail)}')
  for k in reinit:
    logging.warning('init.path=%s has num_classes=%d, the run %d: %s initialised afresh', path,
                    src_model.num_classes, model.num_classes, k)
  params = {k: v for k, v in params.items() if k not in reinit}
  record = dict(path=path, source=kind, source_num_classes=src_model.num_classes, reinitialised=reinit,
                fingerprint=sd.fingerprint(params))
  logging.info('fine-tuning from %s (%s), fingerprint %s', path, kind, record['fingerprint'])
  return jax.device_get(params), record


def merge(fresh: dict, start: dict | None) -> dict:
  """`start`'s top-level params where it has them, `fresh`'s (a new init) elsewhere."""
  if start is None:
    return fresh
  return {k: start.get(k, v) for k, v in fresh.items()}
