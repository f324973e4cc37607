"""Orbax checkpoints of the train state plus the JSON the loop needs to resume exactly.

Each step directory holds two items: 'state' (step, params, optimizer state; arrays restored onto
whatever shardings the caller asks for, so the mesh may change between save and restore) and
'meta' (data-iterator state, RNG key data, counters). A step that cannot be read back is reported, moved to the
run folder's `corrupt_checkpoints/` (`RunDir`) and the previous step is tried; a readable step of another model
(other param shapes) is a WeightsError and is left where it is. `restore_params` reads a run's params alone
(for generation and fine-tuning: no task, no optimizer).
"""
from __future__ import annotations

import os
import shutil
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

from var_jax import errors
from var_jax.train import rundir as rundir_lib

STATE, META = 'state', 'meta'


def _saved_part(state) -> dict:
  # The tokenizer (`state.frozen`) is rebuilt from the config, never saved with the run.
  return {'step': state.step, 'params': state.params, 'opt_state': state.opt_state}


class Checkpointer:
  """Save / restore-latest around an orbax CheckpointManager."""

  def __init__(self, run: rundir_lib.RunDir | str, *, keep: int, keep_every: int | None, async_save: bool):
    run = rundir_lib.RunDir(run)
    self._dir = run.checkpoints
    self._quarantine = run.corrupt_checkpoints
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, keep_period=keep_every or None, enable_async_checkpointing=async_save,
        create=True)
    self._manager = ocp.CheckpointManager(self._dir, item_names=(STATE, META), options=options)

  @property
  def directory(self) -> str:
    return self._dir

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, state, meta: dict) -> None:
    """Starts an (async) save of `state` at its own step; all processes must call it."""
    step = int(jax.device_get(state.step))
    self._manager.save(step, force=True, args=ocp.args.Composite(
        state=ocp.args.StandardSave(_saved_part(state)), meta=ocp.args.JsonSave(meta)))

  def reached_preemption(self, step: int) -> bool:
    return self._manager.reached_preemption(step)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()

  def restore_latest(self, state, state_shardings) -> tuple[Any, dict] | None:
    """(state with restored step/params/opt_state, meta) from the newest readable step, or None.

    `state` and `state_shardings` give the target structure and placement (the current mesh).
    """
    target = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        _saved_part(state), _saved_part(state_shardings))
    for step in reversed(self.all_steps()):
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
      except Exception as e:  # pylint: disable=broad-except
        self._check_fits(step, target['params'])  # a readable step of another model is the caller's error
        # Any other failure to read a step (missing or truncated files, bad metadata) means it is unusable.
        logging.error('checkpoint step %d in %s is unreadable (%s: %s); moving it to %s and '
                      'trying the previous one', step, self._dir, type(e).__name__,
                      str(e).splitlines()[0] if str(e) else '', self._quarantine)
        self._set_aside(step)
        continue
      saved = restored[STATE]
      return state.replace(step=saved['step'], params=saved['params'],
                           opt_state=saved['opt_state']), dict(restored[META])
    return None

  def _check_fits(self, step: int, params) -> None:
    """WeightsError when step `step` is readable but holds params of other shapes than `params`."""
    try:
      meta = ocp.StandardCheckpointer().metadata(os.path.join(self._dir, str(step), STATE))
      saved = meta.item_metadata.tree['params']
    except Exception:  # pylint: disable=broad-except
      return  # unreadable metadata: a corrupt step
    bad = _mismatched(param_shapes(params), param_shapes(saved))
    if bad:
      raise errors.WeightsError(
          f'{self._dir}/{step}: the checkpoint does not fit the model at {len(bad)} params, e.g. {bad[0]}; '
          'a changed model needs a new --workdir')

  def _set_aside(self, step: int) -> None:
    if jax.process_index() == 0:
      os.makedirs(self._quarantine, exist_ok=True)
      dest = os.path.join(self._quarantine, str(step))
      shutil.rmtree(dest, ignore_errors=True)
      shutil.move(os.path.join(self._dir, str(step)), dest)
    multihost_utils.sync_global_devices(f'var_jax checkpoint set aside {step}')
    self._manager.reload()


def restore_params(workdir: str | rundir_lib.RunDir, step: int | None = None) -> tuple[Any, int]:
  """(params, step) of a run folder's checkpoint `step` (default: the newest), restored on this process's first
  device (so every process of a multi-process command has them). Nothing else is built: no task, no optimizer.

  ConfigError for a folder without checkpoints or without `step`.
  """
  ckpt_dir = rundir_lib.RunDir(workdir).checkpoints
  if not os.path.isdir(ckpt_dir):
    raise errors.ConfigError(f'{ckpt_dir}: no checkpoints (has the run saved one yet?)')
  manager = ocp.CheckpointManager(ckpt_dir, item_handlers={STATE: ocp.StandardCheckpointHandler(),
                                                            META: ocp.JsonCheckpointHandler()},
                                  options=ocp.CheckpointManagerOptions(read_only=True))
  steps = sorted(manager.all_steps())
  if not steps:
    raise errors.ConfigError(f'{ckpt_dir}: no checkpoints (has the run saved one yet?)')
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise errors.ConfigError(f'{ckpt_dir}: no step {step}; saved steps are {steps}')
  # Every process restores its own copy onto its first device, whatever devices the run saved from (the
  # saved shardings may name devices of another process).
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                                  manager.item_metadata(step)[STATE])
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
  return restored[STATE]['params'], step


def check_params(params, abstract_params, what: str) -> None:
  """WeightsError when `params` differ from the model's `abstract_params` in names or shapes."""
  bad = _mismatched(param_shapes(abstract_params), param_shapes(params))
  if bad:
    raise errors.WeightsError(f'{what}: params do not match the model of the run config at {len(bad)} '
                              f'params, e.g. {bad[0]}')


def param_shapes(tree) -> dict[str, tuple[int, ...]]:
  """{'a/b/kernel': shape} of a params tree (arrays, ShapeDtypeStructs or orbax metadata)."""
  return {'/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path): tuple(x.shape)
          for path, x in jax.tree_util.tree_leaves_with_path(tree)}


def _mismatched(want: dict, got: dict) -> list[str]:
  """'name (model shape vs saved shape)' for each param whose shapes differ or that one side lacks."""
  return [f'{k} ({want.get(k)} vs saved {got.get(k)})' for k in sorted(set(want) | set(got))
          if want.get(k) != got.get(k)]
