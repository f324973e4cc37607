"""The demo's stages and how they run: one subprocess each, its output in OUT/logs/STAGE.log.

Every stage compiles through one persistent compilation cache, OUT/.jax_cache (`var_jax.compilation_cache`).
The console gets one line when a stage starts, a progress bar while a long one runs (read from its log or its
runs' logs), and the stage's headline figures when it ends. Nothing the subprocesses print reaches it.
"""
import csv
import dataclasses
import json
import os
import pathlib
import re
import subprocess
import sys
import time
from typing import Callable, Optional, Sequence

import tqdm

from var_jax import compilation_cache
from var_jax.train.rundir import RunDir

REPO = pathlib.Path(__file__).resolve().parents[2]
POLL_S = 0.5
PLAIN_EVERY_S = 30.0  # without a terminal, a progress line this often instead of a bar
_TAIL_BYTES = 8192
STEP_RE = re.compile(r'\bstep (\d+)/(\d+)')
IMAGES_RE = re.compile(r'\bimages (\d+)/(\d+)')
SWEEP_RUN_RE = re.compile(r'^\[(\d+)/(\d+)\] (\S+): ', re.M)
# What the subprocesses' libraries would print at start-up (TF C++ logs); their absl logs go to the stage log.
QUIET_ENV = {'TF_CPP_MIN_LOG_LEVEL': '3', 'PYTHONUNBUFFERED': '1'}


class StageError(RuntimeError):
  """A stage failed; the message names the stage and its log file."""


Progress = Callable[[pathlib.Path], Optional[tuple[int, int]]]


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str
  what: str  # one line for the console and the report
  done: Callable[[], bool]  # True when the stage's output exists and can be reused
  argv: Callable[[], Sequence[str]]  # built lazily: later stages read earlier stages' outputs
  progress: Optional[Progress] = None  # (done, total) read from the stage's log; None: no bar
  unit: str = 'steps'
  headline: Callable[[], Sequence[str]] = tuple  # result lines once the stage has ended


def _tail(path: pathlib.Path) -> str:
  try:
    with open(path, 'rb') as f:
      f.seek(max(0, os.path.getsize(path) - _TAIL_BYTES))
      return f.read().decode(errors='replace')
  except OSError:
    return ''


def last_count(pattern: re.Pattern) -> Progress:
  """Progress from the last `pattern` match (groups: done, total) in a log."""
  def progress(log: pathlib.Path):
    found = pattern.findall(_tail(log))
    return (int(found[-1][0]), int(found[-1][1])) if found else None
  return progress


def sweep_progress(sweep_dir: pathlib.Path) -> Progress:
  """Steps over all runs of a sweep: the sweep's log names the run under way, whose train.log has its step."""
  def progress(log: pathlib.Path):
    runs = SWEEP_RUN_RE.findall(log.read_text() if log.exists() else '')
    if not runs:
      return None
    k, n, run_id = int(runs[-1][0]), int(runs[-1][1]), runs[-1][2]
    step = last_count(STEP_RE)(sweep_dir / run_id / 'train.log')
    if step is None:
      return None
    return (k - 1) * step[1] + step[0], n * step[1]
  return progress


def _console(msg: str) -> None:
  print(f'[demo] {msg}', flush=True)


def _watch(proc: subprocess.Popen, stage: Stage, log_path: pathlib.Path) -> int:
  """Waits for the stage; meanwhile a progress bar on a terminal, else a progress line every PLAIN_EVERY_S."""
  if stage.progress is None:
    return proc.wait()
  tty = sys.stdout.isatty()
  bar = tqdm.tqdm(total=None, desc=f'       {stage.name}', unit=f' {stage.unit}', file=sys.stdout, leave=False,
                  dynamic_ncols=True, disable=not tty)
  shown, last_line = None, time.monotonic()
  with bar:
    while proc.poll() is None:
      time.sleep(POLL_S)
      counts = stage.progress(log_path)
      if not counts or counts == shown:
        continue
      if tty:
        bar.total = counts[1]
        bar.update(counts[0] - bar.n)
        shown = counts
      elif time.monotonic() - last_line > PLAIN_EVERY_S:
        print(f'       {stage.name}: {counts[0]}/{counts[1]} {stage.unit}', flush=True)
        shown, last_line = counts, time.monotonic()
  return proc.returncode


def run_stage(stage: Stage, log_dir: pathlib.Path, cache_dir: pathlib.Path) -> tuple[float, bool]:
  """Runs one stage with its output in its log and its compilations cached in `cache_dir`; returns (seconds,
  reused)."""
  if stage.done():
    _console(f'{stage.name}: reusing earlier output')
    return 0.0, True
  log_dir.mkdir(parents=True, exist_ok=True)
  log_path = log_dir / f'{stage.name}.log'
  argv = [str(a) for a in stage.argv()]
  _console(f'{stage.name}: {stage.what}')
  start = time.monotonic()
  with open(log_path, 'w') as log:
    log.write('$ ' + ' '.join(argv) + '\n')
    log.flush()
    env = {**os.environ, **QUIET_ENV, **compilation_cache.env(cache_dir)}
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    try:
      rc = _watch(proc, stage, log_path)
    except KeyboardInterrupt:
      proc.terminate()
      proc.wait()
      raise
  seconds = time.monotonic() - start
  if rc != 0 or not stage.done():
    why = f'exited with {rc}' if rc else 'finished without writing its output'
    raise StageError(f"demo stage '{stage.name}' {why}; see {log_path}")
  lines = list(stage.headline())
  _console(f'{stage.name}: done in {seconds:.0f} s' + (f'; {lines[0]}' if lines else ''))
  for line in lines[1:]:
    print(f'         {line}', flush=True)
  return seconds, False


def run_stages(stages: Sequence[Stage], out: pathlib.Path) -> dict[str, dict]:
  """Runs the stages in order and records their wall time in OUT/timings.json (kept across reruns)."""
  timings_path = out / 'timings.json'
  timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
  for stage in stages:
    seconds, reused = run_stage(stage, out / 'logs', out / '.jax_cache')
    if not reused:
      timings[stage.name] = {'what': stage.what, 'seconds': round(seconds, 1)}
      timings_path.write_text(json.dumps(timings, indent=1))
  return timings


# ---- the demo's stages ----------------------------------------------------------------------------

# Per demo size: the tokenizer config (the table the VAR sizes must match: vocab, Cvae, patch_nums and image size
# are read back from the trained tokenizer), the sweep, the classifier (trained on the tokenizer's data) and the
# samples each size draws for FD and sample accuracy.
SIZES = {
    'full': dict(tokenizer='experiments/tokenizer_shapes.py:demo', sweep='experiments/shapes_scaling.py',
                 classifier='experiments/classifier_shapes.py:demo', classifier_flags=(), samples_per_class=32),
    'tiny': dict(tokenizer='experiments/tokenizer_shapes.py:test', sweep='experiments/shapes_scaling.py:tiny',
                 classifier='experiments/classifier_shapes.py:tiny', samples_per_class=2,
                 classifier_flags=('--config.steps=6', '--config.optim.warmup_steps=1', '--config.eval.every_steps=6',
                                   '--config.eval.batch_size=16', '--config.checkpoint.every_steps=6')),
}
# The tokenizer's data keys that the classifier must share (same images, same classes).
SHARED_DATA_KEYS = ('data_dir', 'image_size', 'num_train', 'num_eval', 'max_shapes', 'synthetic_seed',
                    'synthetic_style', 'synthetic_classes', 'synthetic_radius')


def _module(name: str, *args: str) -> list[str]:
  return [sys.executable, '-m', name, *args]


def _json(path: pathlib.Path) -> dict:
  return json.loads(path.read_text())


def _flag_value(value) -> str:
  return '(' + ','.join(str(v) for v in value) + ',)' if isinstance(value, (list, tuple)) else str(value)


def tokenizer_overrides(tok_dir: pathlib.Path, prefix: str) -> list[str]:
  """--config flags that give a VAR config the trained tokenizer's vocabulary, channels and scales."""
  tok = _json(tok_dir / 'config.json')
  return [f'--{prefix}tokenizer.path={tok_dir}', f'--{prefix}model.vocab_size={tok["vocab_size"]}',
          f'--{prefix}model.cvae={tok["z_channels"]}', f'--{prefix}model.patch_nums={_flag_value(tok["patch_nums"])}']


def results(sweep_dir: pathlib.Path) -> list[dict[str, str]]:
  """The sweep's results.csv rows, smallest model first."""
  with open(sweep_dir / 'results.csv') as f:
    return sorted(csv.DictReader(f), key=lambda r: float(r['params']))


def _split_done(tokens: pathlib.Path, split: str) -> bool:
  info = tokens / 'dataset_info.json'
  return info.exists() and split in {s['name'] for s in _json(info).get('splits', [])}


def _si(x: float) -> str:
  for unit, scale in (('G', 1e9), ('M', 1e6), ('K', 1e3)):
    if x >= scale:
      return f'{x / scale:.3g}{unit}'
  return f'{x:.3g}'


def make_stages(out: pathlib.Path, size: str) -> list[Stage]:
  s = SIZES[size]
  data_dir, tok_run, cls_run = out / 'tfds', out / 'tokenizer', out / 'classifier'
  tok_dir, tokens, sweep, samples = tok_run / 'tokenizer', out / 'tokens', out / 'sweep', out / 'samples'
  data_flag = f'--config.data.data_dir={data_dir}'

  def data_cfg() -> dict:
    return RunDir(tok_run).config_json()['data']

  def tokenize_argv(split):
    return _module('var_jax.tokenize', f'--config={s["tokenizer"]}', data_flag, f'--config.tokenizer.path={tok_dir}',
                   f'--out={tokens}', f'--split={split}', '--batch_size=128')

  def sweep_argv(*extra):
    # The fit stage re-expands the same sweep, so both must pass the same overrides (they set the run ids).
    return _module('var_jax.sweep', f'--config={s["sweep"]}', f'--workdir={sweep}', *extra,
                   *tokenizer_overrides(tok_dir, 'config.base.'), '--config.base.data.name=tokens',
                   f'--config.base.data.path={tokens}', f'--config.base.data.image_size={data_cfg()["image_size"]}',
                   f'--config.base.model.num_classes={_json(tokens / "tokenize-train.json")["num_classes"]}')

  def classifier_argv():
    shared = [f'--config.data.{k}={_flag_value(data_cfg()[k])}' for k in SHARED_DATA_KEYS]
    return _module('var_jax.train', f'--config={s["classifier"]}', f'--workdir={cls_run}', *s['classifier_flags'],
                   *shared)

  def tokenizer_headline():
    ev = RunDir(tok_run).done()['eval']
    return [f'eval PSNR {ev["psnr"]:.2f} dB, SSIM {ev["ssim"]:.3f} (grid: {tok_run / "recon_grid.png"})']

  def tokens_headline(split):
    return lambda: [f'{_json(tokens / f"tokenize-{split}.json")["num_source"]} images']

  def sweep_headline():
    return [f'{r["run_id"]} ({_si(float(r["params"]))} params): eval loss {float(r["loss"]):.4f}'
            for r in results(sweep)]

  def fit_headline():
    fits = _json(sweep / 'report' / 'fits.json')
    laws = [(x, fits[f'power_{x}_loss']) for x in ('params', 'flops') if f'power_{x}_loss' in fits]
    return [f'L ~ X^alpha against {x}: alpha {law["alpha"]:.4f}, r {law["r"]:.4f}' for x, law in laws]

  def classifier_headline():
    ev = RunDir(cls_run).done().get('eval', {})
    return [f'held-out accuracy {ev["acc"]:.3f}'] if 'acc' in ev else []

  def sample_headline():
    return [f'{q["run_id"]}: FD {q["fd"]:.3f}, sample accuracy {q["sample_accuracy"]:.3f}'
            for q in _json(samples / 'quality.json')['runs']]

  return [
      Stage('data', 'draw the synthetic_shapes images (TFDS ArrayRecord, made locally)',
            lambda: any(data_dir.glob('synthetic_shapes/*/*/dataset_info.json')),
            lambda: _module('var_jax.data', f'--config={s["tokenizer"]}', data_flag)),
      Stage('tokenizer', 'train the multi-scale VQVAE tokenizer',
            lambda: RunDir(tok_run).done() is not None,
            lambda: _module('var_jax.train', f'--config={s["tokenizer"]}', f'--workdir={tok_run}', data_flag),
            progress=last_count(STEP_RE), headline=tokenizer_headline),
      Stage('tokenize_train', 'pre-tokenize the train split with the frozen tokenizer',
            lambda: _split_done(tokens, 'train'), lambda: tokenize_argv('train'), headline=tokens_headline('train')),
      Stage('tokenize_eval', 'pre-tokenize the validation split',
            lambda: _split_done(tokens, 'validation'), lambda: tokenize_argv('validation'),
            headline=tokens_headline('validation')),
      Stage('sweep', 'train VAR at every size of the sweep on the stored tokens',
            lambda: (sweep / 'results.csv').exists() and all(r['status'] == 'done' for r in results(sweep)),
            lambda: sweep_argv('--noreport', '--retry_failed'), progress=sweep_progress(sweep),
            headline=sweep_headline),
      Stage('fit', 'fit L = (beta X)^alpha against parameters and compute; plots and tables',
            lambda: (sweep / 'report' / 'fits.json').exists(), lambda: sweep_argv('--aggregate_only'),
            headline=fit_headline),
      Stage('classifier', 'train the shapes classifier that scores the samples',
            lambda: RunDir(cls_run).done() is not None, classifier_argv, progress=last_count(STEP_RE),
            headline=classifier_headline),
      Stage('sample', 'sample every size; FD and sample accuracy with the classifier',
            lambda: (samples / 'quality.json').exists(),
            lambda: _module('var_jax.demo.quality', f'--out={out}', f'--samples_per_class={s["samples_per_class"]}'),
            progress=last_count(IMAGES_RE), unit='images', headline=sample_headline),
  ]
