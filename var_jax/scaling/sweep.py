"""Scaling sweeps: expand a sweep file into run configs, launch the runs, aggregate `ROOT/results.csv`.

A sweep file is an ml_collections config file whose `get_config(arg=None)` returns a ConfigDict with
  base              a complete training config (var_jax/train/config.py), shared by every run;
  axes              [(key, values), ...]: one run per combination (dotted keys, e.g. 'model.depth');
  runs              [{key: value, ...}, ...] (optional): explicit points, each combined with every
                    combination of `axes` (e.g. an explicit width for one size);
  derived           [(key, fn), ...] (optional): `fn(run_config) -> value`, applied in order after the
                    axes. Learning-rate rules live here, in plain sight;
  images_per_epoch  (optional) what an `epochs` budget multiplies;
  eval.generate     (optional) generation quality at the end of each run: flags of `python -m
                    var_jax.evaluate` (num_samples, per_class, features, reference, cfg, top_k, top_p,
                    seed, batch_size, ...), e.g. dict(num_samples=1000, features='shapes:CLS',
                    reference='ref.npz'). Outside `base`, so it does not change run ids.
Besides config keys, axes and runs may set a data budget that fixes `steps` from the batch size:
`tokens`, `images`, `epochs`, or `flops` (analytic training FLOPs of the run's model, var_jax.flops;
an IsoFLOP sweep crosses `flops` with `model.depth`).

Local runs share a persistent compilation cache, ROOT/.jax_cache (`var_jax.compilation_cache`; a
JAX_COMPILATION_CACHE_DIR set by the user wins), so a run compiles only what no earlier run of that shape did.
Each run has a stable id, '<prefix>-s<steps>-<hash>' (prefix from its task, e.g. `d{depth}`; hash of its
config), and a folder ROOT/<run_id> holding run_config.json (the config), run_config.py (what `var_jax.train
--config=` loads), train.log, the trainer's own outputs, and ERROR when the run failed. A run's status comes
from the trainer's exit code (`var_jax.errors`: 3 is a diverged run) and its files, never from its log text.
With `eval.generate`, every finished run without RUN/quality/metrics.json is then evaluated (local launcher;
`print` prints the commands), logging to RUN/quality.log; results.csv gains the quality columns
(`runs.QUALITY_COLUMNS`: fid, is_mean, ..., sample_accuracy) and the report fits and plots them.
"""
import csv
import dataclasses
import hashlib
import itertools
import json
import math
import os
import shlex
import subprocess
import sys
import time
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, TextIO

import ml_collections

from var_jax import compilation_cache
from var_jax import errors
from var_jax.scaling import evaluation
from var_jax.scaling import runs as runs_lib
from var_jax.train import config as config_lib
from var_jax.train import rundir as rundir_lib
from var_jax.train import tasks
from var_jax.train import workdir as workdir_lib

BUDGET_KEYS = ('tokens', 'images', 'epochs', 'flops')
CACHE_DIR = '.jax_cache'  # under ROOT
# A command (shell words) that replaces `python -m var_jax.train` for every run, to hand runs to a launcher
# (each launcher takes the command after `--`): `launch/local.sh 2 -- python -m var_jax.train`, or
# `launch/tpu_pod.sh --tpu NAME --zone ZONE -- python -m var_jax.train`. The sweep appends --config, --workdir.
TRAINER_ENV = 'VAR_JAX_SWEEP_TRAINER'
RESULT_COLUMNS = ('run_id', 'depth', 'width', 'heads', 'params', 'params_nonembed', 'batch_size', 'steps',
                  'images', 'tokens', 'flops', 'loss', 'loss_last_scale', 'acc', 'acc_last_scale', 'status', 'error')
_RUN_CONFIG_PY = '''"""Written by var_jax.sweep: the run's config is run_config.json beside this file."""
import os

from var_jax.scaling import sweep


def get_config(arg=None):
  del arg
  return sweep.load_run_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), {json!r}))
'''


@dataclasses.dataclass(frozen=True)
class Run:
  run_id: str
  config: ml_collections.ConfigDict


# ---------------------------------------------------------------------------------------------------
# Expansion.
# ---------------------------------------------------------------------------------------------------


def _set(cfg: ml_collections.ConfigDict, key: str, value: Any) -> None:
  *parents, leaf = key.split('.')
  node = cfg
  for i, part in enumerate(parents):
    if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
      raise errors.ConfigError(f'sweep: unknown config key {key!r} ({".".join(parents[:i + 1])!r} is not a group)')
    node = node[part]
  if leaf not in node:
    raise errors.ConfigError(f'sweep: unknown config key {key!r}')
  try:
    node[leaf] = tuple(value) if isinstance(value, list) else value
  except TypeError as e:
    raise errors.ConfigError(f'sweep: bad value {value!r} for {key!r}: {e}') from None


def _task(cfg: ml_collections.ConfigDict):
  return tasks.get(cfg.get('task', 'var'))


def _steps_for_budget(cfg: ml_collections.ConfigDict, kind: str, amount: float,
                      images_per_epoch: Optional[int]) -> int:
  """Training steps that spend `amount` of `kind` (tokens, images, epochs or flops) at cfg's batch size."""
  sizes = lambda: _task(cfg).sizes(cfg)
  images = {
      'images': lambda: amount,
      'tokens': lambda: amount / sizes().tokens_per_example,
      'flops': lambda: amount / sizes().flops_per_example,
      'epochs': lambda: amount * images_per_epoch,
  }[kind]
  if kind == 'epochs' and not images_per_epoch:
    raise errors.ConfigError('sweep: an `epochs` budget needs `images_per_epoch` in the sweep file')
  steps = round(images() / cfg.batch_size)
  if steps < 1:
    raise errors.ConfigError(f'sweep: {kind}={amount:g} is less than one step of batch_size={cfg.batch_size}')
  return int(steps)


def config_hash(cfg: ml_collections.ConfigDict) -> str:
  return hashlib.sha1(cfg.to_json(sort_keys=True).encode()).hexdigest()[:8]


def run_id(cfg: ml_collections.ConfigDict) -> str:
  """'{task prefix}-s{steps}-{hash of the config}' (e.g. d16-s5000-1a2b3c4d): readable, stable for a config."""
  return f'{_task(cfg).run_prefix(cfg)}-s{cfg.steps}-{config_hash(cfg)}'


def expand(sweep: ml_collections.ConfigDict) -> list[Run]:
  """The runs of a sweep file's config (see the module docstring), in axes order, duplicates removed."""
  if 'base' not in sweep:
    raise errors.ConfigError('sweep: the sweep config needs a `base` training config')
  axes = [tuple(a) for a in sweep.get('axes') or ()]
  for axis in axes:
    if len(axis) != 2 or isinstance(axis[1], (str, bytes)) or not isinstance(axis[1], Iterable):
      raise errors.ConfigError(f'sweep: each axis must be (key, [values]), got {axis!r}')
  points = list(sweep.get('runs') or [{}])
  derived = list(sweep.get('derived') or ())
  images_per_epoch = sweep.get('images_per_epoch')
  out, seen = [], set()
  for combo in itertools.product(*[[(k, v) for v in values] for k, values in axes]):
    for point in points:
      settings = dict(combo)
      settings.update(point)
      cfg = ml_collections.ConfigDict(sweep.base.to_dict())
      budget = {k: settings.pop(k) for k in BUDGET_KEYS if k in settings}
      if len(budget) > 1:
        raise errors.ConfigError(f'sweep: set one data budget per run, got {sorted(budget)}')
      for key, value in settings.items():
        _set(cfg, key, value)
      for kind, amount in budget.items():
        cfg.steps = _steps_for_budget(cfg, kind, amount, images_per_epoch)
      for key, fn in derived:
        _set(cfg, key, fn(cfg))
      run = Run(run_id(cfg), cfg)
      if run.run_id not in seen:
        seen.add(run.run_id)
        out.append(run)
  return out


def load_run_config(path: str) -> ml_collections.ConfigDict:
  """A run config from its JSON (lists come back as the tuples the training config uses)."""
  return config_lib.load_json(path)


def write_run_files(root: str, run: Run) -> str:
  """ROOT/<run_id>/run_config.{json,py}; returns the run folder. An existing config is kept as is."""
  folder = rundir_lib.RunDir(os.path.join(root, run.run_id))
  os.makedirs(folder.path, exist_ok=True)
  if not os.path.exists(folder.run_config_json):
    rundir_lib.write_text(folder.run_config_json, run.config.to_json(indent=2, sort_keys=True))
  with open(folder.run_config_py, 'w') as f:
    f.write(_RUN_CONFIG_PY.format(json=folder.RUN_CONFIG_JSON))
  return folder.path


# ---------------------------------------------------------------------------------------------------
# Launching.
# ---------------------------------------------------------------------------------------------------


def train_args(run_dir: str) -> list[str]:
  run_dir = os.path.abspath(run_dir)
  return [f'--config={rundir_lib.RunDir(run_dir).run_config_py}', f'--workdir={run_dir}']


def trainer_command(run_dir: str) -> list[str]:
  prefix = shlex.split(os.environ[TRAINER_ENV]) if os.environ.get(TRAINER_ENV) else [
      sys.executable, '-m', 'var_jax.train']
  return prefix + train_args(run_dir)


def _fmt_seconds(s: float) -> str:
  return f'{int(s // 3600)}h{int(s % 3600 // 60):02d}m{int(s % 60):02d}s'


def _live(run_dir: str) -> bool:
  """Whether a live trainer holds the run folder's lock (another sweep, a resubmitted job)."""
  return os.path.isdir(run_dir) and workdir_lib.holder(run_dir) is not None


def pending(root: str, runs: Sequence[Run], retry_failed: bool) -> list[Run]:
  """Runs to launch: not done, not running elsewhere, and not failed/diverged unless `retry_failed`."""
  skip = ('done',) if retry_failed else ('done', 'failed', 'diverged')
  return [r for r in runs if runs_lib.status(os.path.join(root, r.run_id)) not in skip
          and not _live(os.path.join(root, r.run_id))]


def run_local(root: str, runs: Sequence[Run], retry_failed: bool = False, out: TextIO = sys.stdout) -> None:
  """Runs the pending runs one after another as subprocesses; a failure is recorded and the next starts."""
  todo = pending(root, runs, retry_failed)
  done_before = len(runs) - len(todo)
  print(f'sweep: {len(runs)} runs, {done_before} already finished or failed, {len(todo)} to run', file=out,
        flush=True)
  start = time.time()
  env = {**os.environ, **compilation_cache.env(os.path.join(os.path.abspath(root), CACHE_DIR))}
  for k, run in enumerate(todo):
    if _live(os.path.join(root, run.run_id)):
      holder = workdir_lib.describe(workdir_lib.holder(os.path.join(root, run.run_id)))
      print(f'[{k + 1}/{len(todo)}] {run.run_id}: skipped, running elsewhere ({holder})', file=out, flush=True)
      continue
    run_dir = write_run_files(root, run)
    before = runs_lib.status(run_dir)
    elapsed = time.time() - start
    eta = '' if k == 0 else f', eta {_fmt_seconds(elapsed / k * (len(todo) - k))}'
    print(f'[{k + 1}/{len(todo)}] {run.run_id}: {"resuming" if before == "partial" else "starting"} '
          f'(elapsed {_fmt_seconds(elapsed)}{eta})', file=out, flush=True)
    folder = rundir_lib.RunDir(run_dir)
    error_path, log_path = folder.error, folder.log
    if os.path.exists(error_path):
      os.remove(error_path)
    t0 = time.time()
    with open(log_path, 'a') as log:
      log.write(f'$ {shlex.join(trainer_command(run_dir))}\n')
      log.flush()
      proc = subprocess.Popen(trainer_command(run_dir), stdout=log, stderr=subprocess.STDOUT, env=env)
      try:
        rc = proc.wait()
      except KeyboardInterrupt:
        proc.terminate()  # the trainer checkpoints on SIGTERM; the next invocation resumes it
        proc.wait()
        raise
    if rc == 0 and runs_lib.status(run_dir) == 'done':
      final = (folder.done() or {}).get('eval') or {}
      loss = final.get('loss')
      print(f'    done in {_fmt_seconds(time.time() - t0)}' + (f', eval loss {loss:.4f}' if loss else ''),
            file=out, flush=True)
      continue
    error = (runs_lib.last_line(log_path) if rc else '') or f'exit status {rc} without a DONE file'
    kind = 'diverged' if rc == errors.DivergedError.exit_code else 'failed'
    with open(error_path, 'w') as f:
      json.dump(dict(status=kind, returncode=rc, error=error, log=log_path), f, indent=1)
    print(f'    {kind} (exit {rc}): {error}  [log: {log_path}]', file=out, flush=True)


def print_commands(root: str, runs: Sequence[Run], retry_failed: bool = False, out: TextIO = sys.stdout) -> None:
  """One `python -m var_jax.train ...` line per pending run (run files are written so the lines work)."""
  for run in pending(root, runs, retry_failed):
    print(shlex.join(trainer_command(write_run_files(root, run))), file=out)


def submit_slurm(root: str, runs: Sequence[Run], sbatch_args: str = '', retry_failed: bool = False,
                 out: TextIO = sys.stdout) -> None:
  """`sbatch [ARGS] launch/slurm.sbatch --config=... --workdir=...` per pending run, from the checkout."""
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  script = os.path.join(repo, 'launch', 'slurm.sbatch')
  if not os.path.exists(script):
    raise FileNotFoundError(f'{script} not found: --launcher=slurm needs a var_jax checkout with launch/')
  for run in pending(root, runs, retry_failed):
    run_dir = write_run_files(root, run)
    cmd = ['sbatch', f'--job-name=var-{run.run_id}', f'--output={os.path.join(run_dir, "slurm-%j.out")}',
           *shlex.split(sbatch_args), script, '--', *trainer_command(run_dir)]
    result = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
    if result.returncode:
      raise RuntimeError(f'sbatch failed for {run.run_id}: {result.stderr.strip()}')
    print(f'{run.run_id}: {result.stdout.strip()}', file=out, flush=True)


# ---------------------------------------------------------------------------------------------------
# Aggregation.
# ---------------------------------------------------------------------------------------------------


def run_dirs(root: str) -> list[str]:
  """Run folders under ROOT (those holding a run_config.json)."""
  if not os.path.isdir(root):
    raise FileNotFoundError(f'sweep workdir {root} does not exist')
  return sorted(os.path.join(root, d) for d in os.listdir(root)
                if os.path.exists(rundir_lib.RunDir(os.path.join(root, d)).run_config_json))


def _sizes(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """The task's size columns and the planned tokens/FLOPs; blanks where the config is invalid."""
  images = cfg.steps * cfg.batch_size
  columns = _task(cfg).columns(cfg)
  try:
    sizes = _task(cfg).sizes(cfg)
  except (errors.VarJaxError, ValueError):  # the run fails on it too, and says why in its error column
    return columns
  return dict(columns, params=sizes.params, params_nonembed=sizes.params_nonembed,
              tokens=images * sizes.tokens_per_example, flops=images * sizes.flops_per_example)


def result_row(run_dir: str) -> dict[str, Any]:
  """One results.csv row: sizes from the config, final eval figures, status and error.

  images, tokens and flops are those seen at the final eval (its step, `tokens_seen`, `flops_seen`), else
  the planned totals.
  """
  folder = rundir_lib.RunDir(run_dir)
  cfg = load_run_config(folder.run_config_json)
  status = runs_lib.status(run_dir)
  done = folder.done() or {}
  evals = runs_lib.read_metrics(run_dir, 'eval')
  final = done.get('eval') or (evals[-1] if evals else {})
  row = dict(run_id=os.path.basename(run_dir), batch_size=cfg.batch_size, steps=cfg.steps,
             images=final.get('step', cfg.steps) * cfg.batch_size, status=status,
             error=(folder.error_record() or {}).get('error', ''),
             **_sizes(cfg))
  row.update({k: final[v] for k, v in (('tokens', 'tokens_seen'), ('flops', 'flops_seen')) if v in final})
  row.update({k: v for k, v in final.items() if k.startswith(('loss', 'acc'))})
  quality = runs_lib.read_quality(run_dir)
  if quality is not None:
    row.update(quality)  # None (not measurable) is an empty cell
  quality_error = rundir_lib.read_json(folder.quality_error)
  if quality_error is not None:
    row['quality_error'] = quality_error.get('error', '')
  return row


def _scale_key(column: str) -> tuple:
  kind, _, k = column.rpartition('_')
  return (kind, int(k)) if k.isdigit() else (column, -1)


def aggregate(root: str) -> list[dict[str, Any]]:
  """Writes ROOT/results.csv (one row per run: RESULT_COLUMNS, the quality columns of evaluated runs, then
  per-scale losses and accuracies)."""
  rows = sorted((result_row(d) for d in run_dirs(root)),
                key=lambda r: (r.get('params') or math.inf, r['steps'], r['run_id']))
  present = {k for r in rows for k in r}
  quality = [c for c in (*runs_lib.QUALITY_COLUMNS, 'quality_error') if c in present]
  extra = quality + sorted(present - set(RESULT_COLUMNS) - set(quality), key=_scale_key)
  path = os.path.join(root, 'results.csv')
  with open(path + '.tmp', 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(RESULT_COLUMNS) + extra, restval='')
    writer.writeheader()
    writer.writerows(rows)
  os.replace(path + '.tmp', path)
  return rows


def summary_line(rows: Sequence[Mapping[str, Any]]) -> str:
  counts = {s: sum(r['status'] == s for r in rows) for s in runs_lib.STATUSES}
  return 'sweep: ' + ', '.join(f'{n} {s}' for s, n in counts.items() if n) + f' ({len(rows)} runs)'


def check_finished(rows: Sequence[Mapping[str, Any]]) -> None:
  """errors.RunsFailedError naming the runs of `rows` recorded as failed or diverged."""
  bad = [f'{r["run_id"]} ({r["status"]})' for r in rows if r['status'] in ('failed', 'diverged')]
  if bad:
    shown = ', '.join(bad[:5]) + (f' and {len(bad) - 5} more' if len(bad) > 5 else '')
    raise errors.RunsFailedError(f'{len(bad)} of {len(rows)} runs did not finish: {shown}; their errors are in '
                                 'results.csv and each run\'s train.log (rerun with --retry_failed)')


def launch(sweep: Optional[ml_collections.ConfigDict], root: str, launcher: str = 'local',
           aggregate_only: bool = False, retry_failed: bool = False, sbatch_args: str = '',
           report: bool = True, out: TextIO = sys.stdout) -> list[dict[str, Any]]:
  """What `python -m var_jax.sweep` does: launch (unless aggregate_only), then results.csv and the report."""
  launchers: dict[str, Callable[..., None]] = {
      'local': lambda r: run_local(root, r, retry_failed, out),
      'print': lambda r: print_commands(root, r, retry_failed, out),
      'slurm': lambda r: submit_slurm(root, r, sbatch_args, retry_failed, out),
  }
  if launcher not in launchers:
    raise errors.ConfigError(f'--launcher must be one of {sorted(launchers)}, got {launcher!r}')
  os.makedirs(root, exist_ok=True)
  if not aggregate_only:
    if sweep is None:
      raise errors.ConfigError('--config (a sweep file) is needed unless --aggregate_only')
    runs = expand(sweep)
    for run in runs:
      write_run_files(root, run)
    launchers[launcher](runs)
    generate = evaluation.quality_flags(sweep)
    if generate and launcher == 'local':
      evaluation.evaluate_local(root, runs, generate, out)
    elif generate and launcher == 'print':
      evaluation.print_commands(root, runs, generate, out)
    if launcher != 'local':
      return []
  rows = aggregate(root)
  print(f'{summary_line(rows)}; table: {os.path.join(root, "results.csv")}', file=out, flush=True)
  if report:
    from var_jax.scaling import report as report_lib  # matplotlib only when a report is asked for
    path = report_lib.write_report(root)
    print(f'report: {path}', file=out, flush=True)
  return rows
