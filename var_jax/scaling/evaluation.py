"""Generation quality at the end of each sweep run: `python -m var_jax.evaluate` on every finished run.

A sweep file's optional `eval.generate` holds that command's flags (num_samples, per_class, features,
reference, cfg, top_k, top_p, seed, batch_size, ...). Each finished run without RUN/quality/metrics.json is
evaluated into RUN/quality/ (the command resumes its own sample chunks), logging to RUN/quality.log; a
failure is recorded in RUN/QUALITY_ERROR and does not stop the sweep. Runs are anything with a `run_id`.
"""
import json
import os
import shlex
import subprocess
import sys
import time
from typing import Any, Mapping, Sequence, TextIO

import ml_collections

from var_jax import errors
from var_jax.scaling import runs as runs_lib
from var_jax.train import rundir as rundir_lib

# A command (shell words) that replaces `python -m var_jax.evaluate`, as sweep.TRAINER_ENV does for training.
EVALUATOR_ENV = 'VAR_JAX_SWEEP_EVALUATOR'


def quality_flags(sweep: ml_collections.ConfigDict) -> dict[str, Any]:
  """The sweep's `eval.generate` (flags of var_jax.evaluate), {} when it asks for no evaluation."""
  generate = (sweep.get('eval') or {}).get('generate') or {}
  generate = dict(generate.to_dict() if isinstance(generate, ml_collections.ConfigDict) else generate)
  if generate and 'features' not in generate:
    raise errors.ConfigError('sweep: eval.generate needs `features` (and usually `reference`): what quality is '
                     'measured with')
  return generate


def _flag(key: str, value: Any) -> str:
  if isinstance(value, bool):
    return f'--{key}' if value else f'--no{key}'
  return f'--{key}={value}'


def evaluator_command(run_dir: str, generate: Mapping[str, Any]) -> list[str]:
  """`python -m var_jax.evaluate --workdir=RUN --out=RUN/quality` with the sweep's eval.generate flags."""
  prefix = shlex.split(os.environ[EVALUATOR_ENV]) if os.environ.get(EVALUATOR_ENV) else [
      sys.executable, '-m', 'var_jax.evaluate']
  run_dir = os.path.abspath(run_dir)
  return prefix + [f'--workdir={run_dir}', f'--out={rundir_lib.RunDir(run_dir).quality}',
                   '--noprogress'] + [_flag(k, v) for k, v in sorted(generate.items())]


def to_evaluate(root: str, runs: Sequence[Any]) -> list[str]:
  """Folders of the finished runs that have no quality/metrics.json yet."""
  dirs = [os.path.join(root, r.run_id) for r in runs]
  return [d for d in dirs if runs_lib.status(d) == 'done' and runs_lib.read_quality(d) is None]


def evaluate_local(root: str, runs: Sequence[Any], generate: Mapping[str, Any], out: TextIO = sys.stdout) -> None:
  """Evaluates the finished, unevaluated runs one after another; a failure goes to RUN/QUALITY_ERROR."""
  todo = to_evaluate(root, runs)
  if todo:
    print(f'sweep: evaluating generation quality of {len(todo)} runs', file=out, flush=True)
  for k, run_dir in enumerate(todo):
    cmd = evaluator_command(run_dir, generate)
    log_path, error_path = rundir_lib.RunDir(run_dir).quality_log, rundir_lib.RunDir(run_dir).quality_error
    t0 = time.time()
    with open(log_path, 'a') as log:
      log.write(f'$ {shlex.join(cmd)}\n')
      log.flush()
      rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    quality = runs_lib.read_quality(run_dir)
    if rc == 0 and quality is not None:
      if os.path.exists(error_path):
        os.remove(error_path)
      shown = ', '.join(f'{c} {v:.4g}' for c, v in quality.items() if isinstance(v, (int, float)))
      print(f'[{k + 1}/{len(todo)}] {os.path.basename(run_dir)}: evaluated in {time.time() - t0:.0f}s'
            f'{": " + shown if shown else ""}', file=out, flush=True)
      continue
    error = (runs_lib.last_line(log_path) if rc else '') or f'exit status {rc} without quality/metrics.json'
    with open(error_path, 'w') as f:
      json.dump(dict(returncode=rc, error=error, log=log_path), f, indent=1)
    print(f'[{k + 1}/{len(todo)}] {os.path.basename(run_dir)}: evaluation failed (exit {rc}): {error}', file=out,
          flush=True)


def print_commands(root: str, runs: Sequence[Any], generate: Mapping[str, Any], out: TextIO = sys.stdout) -> None:
  for run_dir in to_evaluate(root, runs):
    print(shlex.join(evaluator_command(run_dir, generate)), file=out)
