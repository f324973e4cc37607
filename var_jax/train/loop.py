"""The training loop: resume, train, evaluate, log and checkpoint until `config.steps`.

Steps run `train.steps_per_call` (k) to a compiled call, over k batches drawn in order, so the data and the
losses are those of k = 1. Evaluation, checkpoints and preemption act between calls, which end on multiples of
k (and at `steps`); every logged step still gets its own record.

The run folder's layout is `var_jax.train.rundir.RunDir`'s (a resumed run may change only
`workdir.MAY_CHANGE` of its config). Only process 0 writes files other than checkpoints.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from typing import Any

from absl import logging
import jax
import numpy as np

from var_jax import errors
from var_jax import paths
from var_jax.train import checkpoint as checkpoint_lib
from var_jax.train import config as config_lib
from var_jax.train import engine as engine_lib
from var_jax.train import perf
from var_jax.train import rundir as rundir_lib
from var_jax.train import workdir as workdir_lib


class MetricsWriter:
  """metrics.jsonl + TensorBoard on process 0; a no-op elsewhere."""

  def __init__(self, run: rundir_lib.RunDir, enabled: bool):
    self._enabled = enabled
    self._path = run.metrics
    self._tb = None
    if enabled:
      self._tb = _summary_writer(run.tb)

  def truncate_after(self, step: int) -> None:
    """Drops records past `step` (written by a run that died before its next checkpoint)."""
    if not self._enabled or not os.path.exists(self._path):
      return
    with open(self._path) as f:
      kept = [line for line in f if line.strip() and json.loads(line)['step'] <= step]
    with open(self._path + '.tmp', 'w') as f:
      f.writelines(kept)
    os.replace(self._path + '.tmp', self._path)

  def write(self, record: dict) -> None:
    if not self._enabled:
      return
    with open(self._path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    for key, value in record.items():
      if key not in ('step', 'split') and isinstance(value, (int, float)):
        self._tb.add_scalar(f'{record["split"]}/{key}', value, record['step'])
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def _summary_writer(logdir: str):
  """tensorboardX's SummaryWriter, imported without torch.

  tensorboardX imports torch when it is installed (only to recognise its tensors), which costs
  seconds per process; we log plain floats, so torch is hidden from that one import.
  """
  hide_torch = 'torch' not in sys.modules
  if hide_torch:
    sys.modules['torch'] = None  # makes `import torch` raise ImportError
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  finally:
    if hide_torch:
      del sys.modules['torch']
  return SummaryWriter(logdir)


def _scalars(metrics: dict) -> dict:
  return {k: float(v) for k, v in jax.device_get(metrics).items() if np.ndim(v) == 0}


def _scalars_at(metrics_N: dict, i: int) -> dict:
  """Step i's scalars of one call's host metrics (stacked [N] over its steps)."""
  return {k: float(v[i]) for k, v in metrics_N.items() if np.ndim(v) == 1}


def _check_finite(metrics_N: dict, first_step: int, last_saved: int | None) -> None:
  """Raises DivergedError naming the first step of a call (metrics stacked [N]) with a non-finite loss or norm."""
  values = jax.device_get({k: metrics_N[k] for k in ('loss', 'grad_norm')})
  bad_N = ~(np.isfinite(values['loss']) & np.isfinite(values['grad_norm']))
  if bad_N.any():
    i = int(np.argmax(bad_N))
    kept = ('No checkpoint was written yet' if last_saved is None
            else f'The last good checkpoint is step {last_saved}')
    raise errors.DivergedError(
        f'non-finite loss={float(values["loss"][i])} grad_norm={float(values["grad_norm"][i])} at step '
        f'{first_step + i}; stopping. {kept}')


def _fmt(value, spec: str) -> str:
  return 'n/a' if value is None else format(value, spec)


def _eta(seconds: float) -> str:
  seconds = int(seconds)
  return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s'


class _StopFlag:
  """Set by SIGTERM (single process; with several, jax's preemption service owns the signal)."""

  def __init__(self):
    self.raised = False
    self._previous = None
    if jax.process_count() == 1:
      self._previous = signal.signal(signal.SIGTERM, self._handler)

  def _handler(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM: saving a checkpoint at the end of this call and exiting')
    self.raised = True

  def restore(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def evaluate(engine: engine_lib.Engine, state) -> dict:
  """Mean eval metrics over `eval.batches` batches from the start of the eval split."""
  batches = engine.batches('eval')
  totals = None
  for _ in range(engine.config.eval.batches):
    metrics = _scalars(engine.eval_step(state, engine.global_batch(next(batches))))
    totals = metrics if totals is None else {k: totals[k] + metrics[k] for k in totals}
  return {k: v / engine.config.eval.batches for k, v in totals.items()}


def train(config: Any, workdir: str, devices=None) -> dict:
  """Trains (or resumes) the run in `workdir`; returns the summary also written to DONE.

  Returns early with {'step', 'preempted': True} after saving when SIGTERM or a preemption notice
  arrives; raises errors.DivergedError (no checkpoint of the bad state) on a non-finite loss.
  """
  stop = _StopFlag()  # first thing: a SIGTERM during start-up still ends in a clean save
  try:
    with contextlib.ExitStack() as resources:
      return _train(config, workdir, devices, stop, resources)
  finally:
    stop.restore()


def _figures(record: dict, keys: tuple[str, ...]) -> str:
  return ' | '.join(f'{k} {record[k]:.4g}' for k in keys if record.get(k) is not None)


def _reconcile(cfg, config, run: rundir_lib.RunDir) -> dict | None:
  """Checks `cfg` against the folder's config; the DONE summary when the run has nothing left to do."""
  if not run.has_config():
    return None
  changed = workdir_lib.reconcile(cfg, config, run.config)
  done = run.done()
  if done is not None and done.get('step', 0) >= cfg.steps:
    logging.info('%s: finished at step %d (DONE); nothing to do', run.path, done['step'])
    return done
  if changed:
    logging.info('%s: resuming with changed keys: %s', run.path, '; '.join(changed))
  return None


def _record_start(cfg, run: rundir_lib.RunDir) -> None:
  """Process 0, once the checkpoint is restored: the config written, and a DONE of a shorter run removed."""
  run.write_config(cfg)
  done = run.done()
  if done is not None:
    logging.info('%s: extending the finished run from step %d to %d', run.path, done['step'], cfg.steps)
    run.remove_done()


def _train(config, workdir, devices, stop, resources) -> dict:
  devices = list(jax.devices() if devices is None else devices)
  cfg = config_lib.resolve(config, len(devices), jax.process_count())
  is_main = jax.process_index() == 0
  run = rundir_lib.RunDir(workdir)
  paths.check_folder(workdir, '--workdir')
  undo = workdir_lib.SetupUndo(workdir)  # a run refused before it starts leaves the folder as it found it
  if is_main:
    resources.push(undo)  # runs last: after the lock is released and the checkpointer closed
  os.makedirs(workdir, exist_ok=True)
  lock = workdir_lib.claim(workdir)
  undo.arm()
  if lock is not None:
    resources.callback(lock.release)
  done = _reconcile(cfg, config, run)
  if done is not None:
    return done

  engine = engine_lib.Engine(cfg, devices)
  console_keys = engine.task.console_keys
  train_batches = engine.batches('train')
  ckpt = checkpoint_lib.Checkpointer(run, keep=cfg.checkpoint.keep,
                                     keep_every=cfg.checkpoint.keep_every,
                                     async_save=cfg.checkpoint.async_save)
  resources.callback(ckpt.close)
  # A run with checkpoints restores them; only a fresh one reads the task's starting point (init.path).
  fresh = not ckpt.all_steps()
  start_point = engine.task.start_params() if fresh else None
  state = engine.init_state(start_point)
  if start_point is not None and start_point.record is not None and is_main:
    run.write_init(start_point.record)
  restored = ckpt.restore_latest(state, engine.state_shardings)
  last_saved = None
  if restored is None and not fresh:  # every saved step was unreadable: start over
    state = engine.init_state()
  if restored is not None:
    state, meta = restored
    train_batches.set_state(meta['data'])
    engine.set_rng(meta['rng'])
    last_saved = int(jax.device_get(state.step))
    logging.info('resumed from %s at step %d', ckpt.directory, last_saved)
  start = int(jax.device_get(state.step))
  if start > cfg.steps:
    raise errors.ConfigError(f'steps={cfg.steps} is below the step {start} of the newest checkpoint in '
                             f'{ckpt.directory}')
  if is_main:
    _record_start(cfg, run)
  undo.disarm()

  writer = MetricsWriter(run, is_main)
  resources.callback(writer.close)
  writer.truncate_after(start)
  peak = perf.peak_tflops(devices[0], cfg.log.peak_tflops)
  static = dict(params=engine.num_params)
  logging.info('model: %d params, mesh %s, %d devices, %d processes', engine.num_params,
               dict(engine.mesh.shape), len(devices), jax.process_count())

  def save(state, step):
    nonlocal last_saved
    ckpt.save(state, {'data': train_batches.get_state(), 'rng': engine.rng_list(), 'step': step})
    last_saved = step

  def counters(step):
    return dict(tokens_seen=step * engine.tokens_per_step,
                flops_seen=step * engine.flops_per_step)

  last_train, last_eval = None, None
  previous = None  # (metrics [N], first step) of the call before, checked for finiteness one call late
  t_log, steps_since_log, t_start = time.time(), 0, time.time()
  k, step = cfg.train.steps_per_call, start
  while step < cfg.steps:
    n = min(k - step % k, cfg.steps - step)  # calls end on multiples of k (eval and checkpoint steps) or the end
    first = step + 1
    state, metrics_N = engine.train_steps(state, engine.stacked_batch([next(train_batches) for _ in range(n)]))
    step += n
    steps_since_log += n
    if previous is not None:
      _check_finite(*previous, last_saved)
    previous = (metrics_N, first)
    if first == start + 1:
      t_log = time.time()  # the first call includes compilation; time from here on
      steps_since_log = 0
    preempted = stop.raised or ckpt.reached_preemption(step)
    at_end = step == cfg.steps
    log_steps = [t for t in range(first, step + 1) if t % cfg.log.every_steps == 0 or t == cfg.steps]
    do_eval = step % cfg.eval.every_steps == 0 or at_end
    do_save = step % cfg.checkpoint.every_steps == 0 or at_end or preempted
    if log_steps or do_save:
      _check_finite(metrics_N, first, last_saved)
    if log_steps:
      now = time.time()
      # None until a call without compilation has been timed.
      step_time = (now - t_log) / steps_since_log if steps_since_log else None
      tflops, mfu = (None, None) if step_time is None else perf.throughput(
          engine.flops_per_step, step_time, len(devices), peak)
      host_N = jax.device_get(metrics_N)
      for t in log_steps:
        last_train = dict(step=t, split='train', **_scalars_at(host_N, t - first), **static,
                          **counters(t), step_time_s=step_time, tflops_per_device=tflops, mfu=mfu)
        writer.write(last_train)
        logging.info('step %d/%d | %s | %s s/step | %s TFLOP/s/dev | mfu %s | eta %s', t,
                     cfg.steps, _figures(last_train, console_keys), _fmt(step_time, '.3f'),
                     _fmt(tflops, '.3g'), _fmt(mfu, '.3f'),
                     '?' if step_time is None else _eta(step_time * (cfg.steps - t)))
      t_log, steps_since_log = time.time(), 0
    if do_eval:
      last_eval = dict(step=step, split='eval', **evaluate(engine, state), **static,
                       **counters(step))
      writer.write(last_eval)
      logging.info('eval step %d | %s', step, _figures(last_eval, console_keys))
      t_log, steps_since_log = time.time(), 0
    if do_save:
      save(state, step)
    if preempted and not at_end:
      ckpt.wait()
      logging.warning('preempted at step %d: checkpoint saved, exiting', step)
      return dict(step=step, preempted=True)
  ckpt.wait()
  summary = dict(step=step, steps=cfg.steps, task=cfg.task, **static, **counters(step),
                 loss=None if last_train is None else last_train['loss'],
                 **{f'eval_{k}': None if last_eval is None else last_eval.get(k)
                    for k in engine.task.summary_keys},
                 train=last_train, eval=last_eval, wall_time_s=time.time() - t_start,
                 model=engine.task.describe(), 
                 init=start_point.record if start_point is not None else run.init_record())
  summary.update(engine.task.finish(state, workdir))  # e.g. the exported tokenizer and its grid
  if is_main:
    run.write_done(summary)
  return summary
