r"""`make demo`: the whole var_jax loop on a CPU, on a dataset it draws itself.

  python -m var_jax.demo --out demo_out [--size full|tiny]

Stages (each a subprocess of one of var_jax's own commands, logged to OUT/logs/STAGE.log):
  data -> tokenizer -> tokenize -> sweep -> fit -> sample -> report.
A stage whose output already exists is reused, so a rerun after a failure continues where it stopped.
"""
import dataclasses
import json
import pathlib
import subprocess
import sys
import time
from typing import Callable, Sequence

from absl import flags

from var_jax import cli


class StageError(RuntimeError):
  """A stage failed; the message names the stage and its log file."""


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str
  what: str  # one line for the report
  done: Callable[[], bool]  # True when the stage's output exists and can be reused
  argv: Callable[[], Sequence[str]]  # built lazily: later stages read earlier stages' outputs


def run_stage(stage: Stage, log_dir: pathlib.Path) -> tuple[float, bool]:
  """Runs one stage, streaming its output to the console and its log; returns (seconds, reused)."""
  if stage.done():
    print(f'[demo] {stage.name}: reusing earlier output', flush=True)
    return 0.0, True
  log_dir.mkdir(parents=True, exist_ok=True)
  log_path = log_dir / f'{stage.name}.log'
  argv = list(stage.argv())
  print(f'[demo] {stage.name}: {stage.what}  (log: {log_path})', flush=True)
  start = time.monotonic()
  with open(log_path, 'w') as log:
    log.write('$ ' + ' '.join(argv) + '\n')
    log.flush()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            cwd=REPO)
    for line in proc.stdout:
      log.write(line)
      log.flush()
      print(f'  {stage.name} | {line}', end='', flush=True)
    rc = proc.wait()
  if rc != 0 or not stage.done():
    why = f'exited with {rc}' if rc else 'finished without writing its output'
    raise StageError(f"demo stage '{stage.name}' {why}; see {log_path}")
  return time.monotonic() - start, False


def run_stages(stages: Sequence[Stage], out: pathlib.Path) -> dict[str, dict]:
  """Runs the stages in order and records their wall time in OUT/timings.json (kept across reruns)."""
  timings_path = out / 'timings.json'
  timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
  for stage in stages:
    seconds, reused = run_stage(stage, out / 'logs')
    if not reused:
      timings[stage.name] = {'what': stage.what, 'seconds': round(seconds, 1)}
      timings_path.write_text(json.dumps(timings, indent=1))
  return timings


# ---- the demo's stages ----------------------------------------------------------------------------

# Tokenizer and sweep configs per demo size: the tokenizer config is the table the demo's VAR sizes must match
# (vocab, Cvae, patch_nums, image size are read back from the trained tokenizer).
SIZES = {
    'full': dict(tokenizer='experiments/tokenizer_shapes.py:demo', sweep='experiments/shapes_scaling.py',
                 samples_per_class=4),
    'tiny': dict(tokenizer='experiments/tokenizer_shapes.py:test', sweep='experiments/shapes_scaling.py:tiny',
                 samples_per_class=2),
}
REPO = pathlib.Path(__file__).resolve().parents[1]


def _module(name: str, *args: str) -> list[str]:
  return [sys.executable, '-m', name, *args]


def _tokenizer_overrides(tok_dir: pathlib.Path, prefix: str) -> list[str]:
  """--config flags that give a VAR config the trained tokenizer's vocabulary, channels, scales and images."""
  tok = json.loads((tok_dir / 'config.json').read_text())
  patch_nums = '(' + ','.join(str(p) for p in tok['patch_nums']) + ',)'
  return [f'--{prefix}tokenizer.path={tok_dir}', f'--{prefix}model.vocab_size={tok["vocab_size"]}',
          f'--{prefix}model.cvae={tok["z_channels"]}', f'--{prefix}model.patch_nums={patch_nums}']


def _split_done(tokens: pathlib.Path, split: str) -> bool:
  info = tokens / 'dataset_info.json'
  return info.exists() and split in {s['name'] for s in json.loads(info.read_text()).get('splits', [])}


def _largest_run(sweep_dir: pathlib.Path) -> pathlib.Path:
  rows = _results(sweep_dir)
  done = [r for r in rows if r['status'] == 'done']
  if not done:
    raise StageError(f'no finished run in {sweep_dir / "results.csv"} to sample from')
  return sweep_dir / max(done, key=lambda r: float(r['params']))['run_id']


def _results(sweep_dir: pathlib.Path) -> list[dict[str, str]]:
  import csv  # pylint: disable=g-import-not-at-top
  with open(sweep_dir / 'results.csv') as f:
    return list(csv.DictReader(f))


def make_stages(out: pathlib.Path, size: str) -> list[Stage]:
  s = SIZES[size]
  data_dir, tok_run = out / 'tfds', out / 'tokenizer'
  tok_dir, tokens, sweep = tok_run / 'tokenizer', out / 'tokens', out / 'sweep'
  data_flag = f'--config.data.data_dir={data_dir}'

  def tokenize_argv(split):
    return _module('var_jax.tokenize', f'--config={s["tokenizer"]}', data_flag, f'--config.tokenizer.path={tok_dir}',
                   f'--out={tokens}', f'--split={split}', '--batch_size=128')

  def sweep_argv(*extra):
    # The fit stage re-expands the same sweep, so both must pass the same overrides (they set the run ids).
    from var_jax.data import tokens as tokens_lib  # pylint: disable=g-import-not-at-top  # TFDS: only when used.
    image_size = tokens_lib.read_info(str(tokens))['image_size']
    return _module('var_jax.sweep', f'--config={s["sweep"]}', f'--workdir={sweep}', *extra,
                   *_tokenizer_overrides(tok_dir, 'config.base.'), '--config.base.data.name=tokens',
                   f'--config.base.data.path={tokens}', f'--config.base.data.image_size={image_size}')

  return [
      Stage('data', 'build synthetic_shapes (TFDS ArrayRecord, drawn locally)',
            lambda: any(data_dir.glob('synthetic_shapes/*/*/dataset_info.json')),
            lambda: _module('var_jax.data', f'--config={s["tokenizer"]}', data_flag)),
      Stage('tokenizer', 'train the multi-scale VQVAE tokenizer',
            lambda: (tok_dir / 'vae_state.npz').exists(),
            lambda: _module('var_jax.train', f'--config={s["tokenizer"]}', f'--workdir={tok_run}', data_flag)),
      Stage('tokenize_train', 'pre-tokenize the train split with the frozen tokenizer',
            lambda: _split_done(tokens, 'train'), lambda: tokenize_argv('train')),
      Stage('tokenize_eval', 'pre-tokenize the validation split',
            lambda: _split_done(tokens, 'validation'), lambda: tokenize_argv('validation')),
      Stage('sweep', 'train VAR at every depth of the sweep on the stored tokens',
            lambda: (sweep / 'results.csv').exists() and all(r['status'] == 'done' for r in _results(sweep)),
            lambda: sweep_argv('--noreport')),
      Stage('fit', 'fit L = (beta X)^alpha against parameters and compute; plots and tables',
            lambda: (sweep / 'report' / 'fits.json').exists(),
            lambda: sweep_argv('--aggregate_only')),
      Stage('sample', 'sample a class-conditional grid from the largest model',
            lambda: (out / 'samples' / 'samples.png').exists(),
            lambda: _module('var_jax.sample', f'--workdir={_largest_run(sweep)}', '--classes=' + ','.join(
                str(c) for c in range(10)), f'--samples_per_class={s["samples_per_class"]}', '--top_k=0',
                            '--top_p=0', '--cfg=1.5', f'--out_dir={out / "samples"}')),
  ]


# ---- report ---------------------------------------------------------------------------------------


def _fmt(v, digits=4) -> str:
  return 'n/a' if v is None or v == '' else f'{float(v):.{digits}g}'


def _ci(fit: dict, key: str) -> str:
  lo_hi = fit.get(f'{key}_ci')
  return f'[{_fmt(lo_hi[0])}, {_fmt(lo_hi[1])}]' if lo_hi else 'n/a'


def write_report(out: pathlib.Path, timings: dict[str, dict], size: str) -> pathlib.Path:
  """OUT/report.md: what ran and how long, the runs, the fitted laws, the plots and the samples."""
  sweep = out / 'sweep'
  rows = sorted(_results(sweep), key=lambda r: float(r['params']))
  fits = json.loads((sweep / 'report' / 'fits.json').read_text())
  losses = [float(r['loss']) for r in rows]
  monotone = all(a > b for a, b in zip(losses, losses[1:]))
  total = sum(t['seconds'] for t in timings.values())
  lines = [
      '# var_jax demo', '',
      f'The whole VAR loop on {size!r} settings: a synthetic dataset, a multi-scale VQVAE tokenizer trained on it, '
      'the dataset pre-tokenized, a sweep of VAR depths trained on the tokens, scaling laws fitted to the final '
      'eval losses, and class-conditional samples from the largest model. Every stage is one of var_jax\'s own '
      'commands; each one\'s exact command line heads its log in `logs/`.', '',
      '## Stages', '', '| stage | what | wall time (s) |', '| --- | --- | --- |',
      *[f'| {name} | {t["what"]} | {t["seconds"]:.1f} |' for name, t in timings.items()],
      f'| total | | {total:.1f} |', '',
      '## Runs (final eval)', '',
      '| run | depth | width | params | training FLOPs | tokens | eval loss | last-scale loss | token acc |',
      '| --- | --- | --- | --- | --- | --- | --- | --- | --- |',
      *[f'| {r["run_id"]} | {r["depth"]} | {r["width"]} | {_fmt(r["params"])} | {_fmt(r["flops"])} | '
        f'{_fmt(r["tokens"])} | {_fmt(r["loss"])} | {_fmt(r["loss_last_scale"])} | {_fmt(r["acc"])} |'
        for r in rows], '',
      f'Larger models reach lower eval loss: **{"yes" if monotone else "no"}**.', '',
      '## Fitted laws, L = (beta X)^alpha (95% bootstrap intervals)', '',
      '| X | loss | alpha | alpha 95% | beta | beta 95% | r |', '| --- | --- | --- | --- | --- | --- | --- |',
  ]
  for x in ('params', 'flops'):
    for y in ('loss', 'loss_last_scale'):
      fit = fits.get(f'power_{x}_{y}')
      if fit:
        lines.append(f'| {x} | {y} | {_fmt(fit["alpha"])} | {_ci(fit, "alpha")} | {_fmt(fit["beta"])} | '
                     f'{_ci(fit, "beta")} | {_fmt(fit["r"])} |')
  lines += ['', '## Plots', '']
  for png in sorted((sweep / 'report').glob('*.png')):
    lines += [f'![{png.stem}]({png.relative_to(out)})', '']
  lines += ['## Samples from the largest model', '',
            'One row per class (the ten shape kinds), classifier-free guidance 1.5, sampled from the full '
            'distribution (no top-k or top-p).', '', '![samples](samples/samples.png)', '',
            f'The sweep\'s own report, with every fit it makes: `{(sweep / "report" / "report.md").relative_to(out)}`.']
  path = out / 'report.md'
  path.write_text('\n'.join(lines) + '\n')
  return path


def main(argv):
  cli.no_positional(argv)
  f = flags.FLAGS
  out = pathlib.Path(f.out).resolve()
  out.mkdir(parents=True, exist_ok=True)
  start = time.monotonic()
  try:
    timings = run_stages(make_stages(out, f.size), out)
  except StageError as e:
    print(f'[demo] FAILED: {e}', file=sys.stderr)
    sys.exit(1)
  report = write_report(out, timings, f.size)
  print(f'[demo] done in {time.monotonic() - start:.0f} s; report: {report}')


def run():
  flags.DEFINE_string('out', 'demo_out', 'Folder for everything the demo writes.')
  flags.DEFINE_enum('size', 'full', ['full', 'tiny'], "'full' is the real demo (under 10 minutes on 2 cores); "
                    "'tiny' runs each stage for a few steps, for tests.")
  cli.run(main, prog='var-demo')


if __name__ == '__main__':
  run()
