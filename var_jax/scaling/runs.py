"""Reading the folder of one training run: `metrics.jsonl` and `DONE` (var_jax.train), `ERROR` (the sweep runner)
and `quality/metrics.json` (var_jax.evaluate, when the sweep asks for evaluation).

Run status, as `results.csv` reports it:
  done      DONE exists (the run reached its last step)
  diverged  ERROR records a non-finite loss
  failed    ERROR records any other failure (exit status and the error line)
  partial   no DONE, but metrics or checkpoints exist (a rerun resumes it)
  pending   nothing yet
"""
import json
import math
import os
from typing import Any, Optional

from var_jax.train import rundir as rundir_lib

STATUSES = ('done', 'diverged', 'failed', 'partial', 'pending')
# The metrics of var_jax.evaluate's metrics.json (var_jax.eval.quality.METRIC_KEYS), as results.csv columns.
QUALITY_COLUMNS = ('fid', 'is_mean', 'is_std', 'precision', 'recall', 'sample_accuracy')


def read_metrics(run_dir: str, split: Optional[str] = 'eval') -> list[dict[str, Any]]:
  """Records of `metrics.jsonl` for `split` (all splits if None), in file order; bad lines are skipped."""
  records = []
  try:
    with open(rundir_lib.RunDir(run_dir).metrics) as f:
      for line in f:
        try:
          record = json.loads(line)
        except ValueError:
          continue  # a line cut short by a killed process
        if split is None or record.get('split') == split:
          records.append(record)
  except OSError:
    pass
  return records


def last_line(log_path: str) -> str:
  """The last line of a failed run's log, for the results table (the commands end on their one-line error)."""
  try:
    with open(log_path, errors='replace') as f:
      lines = [l.strip() for l in f.read().splitlines() if l.strip()]
  except OSError:
    return ''
  return lines[-1][:500] if lines else ''


def status(run_dir: str) -> str:
  """One of STATUSES (see the module docstring)."""
  run = rundir_lib.RunDir(run_dir)
  if os.path.exists(run.done_path):
    done = run.done() or {}
    loss = done.get('eval_loss', done.get('loss'))
    return 'diverged' if isinstance(loss, float) and not math.isfinite(loss) else 'done'
  error = run.error_record()
  if error is not None:
    return error.get('status', 'failed')
  return 'partial' if run.started() else 'pending'


def read_quality(run_dir: str) -> Optional[dict[str, Any]]:
  """The quality figures of RUN/quality/metrics.json (None where not measured), or None before evaluation."""
  record = rundir_lib.RunDir(run_dir).quality_record()
  return None if record is None else {k: record.get(k) for k in QUALITY_COLUMNS}
