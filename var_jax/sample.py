"""`python -m var_jax.sample`: class-conditional samples, as a PNG grid (one row per class) and tokens (.npz).

  # a converted official checkpoint (.pth or .npz state dict) and its tokenizer
  python -m var_jax.sample --var=var_d16.pth --tokenizer=vae_ch160v4096z32.pth --out_dir=samples
  # a training run folder (config.json + checkpoints/); the tokenizer comes from its config
  python -m var_jax.sample --workdir=runs/d4 --classes=0,1,2 --samples_per_class=8 --out_dir=samples

A run of task 'next_token' (raster order) samples the same way, one token per step, and one of task 'maskgit'
in 8 parallel decoding steps (tokens.npz then holds their one map as idx_0).

Defaults are the official evaluation setting (cfg 1.5, top-k 900, top-p 0.96); top-k is capped at the
vocabulary size. Writes `<out_dir>/samples.png` and `<out_dir>/tokens.npz` (labels, idx_<k>).
"""
from __future__ import annotations

import json
import os
from typing import Iterator, Sequence

from absl import flags
import numpy as np

from var_jax import cli
from var_jax import errors
from var_jax import paths

PROG = 'var-sample'
SAMPLED_TASKS = ('var', 'next_token', 'maskgit')  # next-scale, next-token (raster), masked parallel decoding


def _define_flags() -> None:
  flags.DEFINE_string('var', None, 'Official VAR state dict (.pth or .npz).')
  flags.DEFINE_string('model_config', None, 'JSON of VAR attributes overriding what the state dict implies '
                      '(e.g. num_heads when attn_l2_norm is off).')
  flags.DEFINE_string('tokenizer', None, 'Tokenizer folder or official .pth/.npz; required with --var, '
                      'overrides the run config otherwise.')
  flags.DEFINE_string('workdir', None, 'Training run folder (config.json + checkpoints/).')
  flags.DEFINE_integer('step', None, 'Checkpoint step of --workdir (default: the latest).')
  flags.DEFINE_list('classes', ['0', '1', '2', '3'], 'Class labels, one grid row each.')
  flags.DEFINE_integer('samples_per_class', 4, 'Samples per class (grid columns).')
  flags.DEFINE_float('cfg', 1.5, 'Classifier-free guidance at the last scale (>= 0).')
  flags.DEFINE_integer('top_k', 900, 'Top-k filtering (0 = off; capped at the vocabulary).')
  flags.DEFINE_float('top_p', 0.96, 'Top-p filtering (0 = off).')
  flags.DEFINE_bool('more_smooth', False, 'Gumbel-softmax visualisation mode.')
  flags.DEFINE_integer('seed', 0, 'Sampling seed.')
  flags.DEFINE_integer('batch_size', 16, 'Images per compiled batch.')
  flags.DEFINE_string('out_dir', 'samples', 'Output directory.')


def load_models(*, var: str | None = None, tokenizer: str | None = None, workdir: str | None = None,
                step: int | None = None, model_config: dict | None = None):
  """(VAR, params, VQVAE, params) from an official VAR state dict and a tokenizer, or from a run folder."""
  from var_jax.weights import var as var_weights  # pylint: disable=g-import-not-at-top
  from var_jax.weights import vqvae  # pylint: disable=g-import-not-at-top
  if var:
    var_model, var_params = var_weights.load(var, model_config)
    return (var_model, var_params, *vqvae.load(tokenizer))
  from var_jax.train import checkpoint  # pylint: disable=g-import-not-at-top
  cfg, task, params, _ = checkpoint.load_run(workdir, step)
  if cfg.get('task', 'var') not in SAMPLED_TASKS:
    raise errors.ConfigError(f'--workdir={workdir} trained task {cfg.task!r}; sampling needs one of '
                             f'{SAMPLED_TASKS}')
  vae_model, vae_params = vqvae.load(tokenizer) if tokenizer else (task.tokenizer, task.frozen())
  return task.model, params, vae_model, vae_params


def sample_batches(sampler, var_params, vae_params, labels: Sequence[int], *, batch_size: int, seed: int,
                   **knobs) -> Iterator[tuple[list[np.ndarray], np.ndarray]]:
  """Yields (idx list, images in [0, 1]) per batch of `labels`; the last batch is padded to `batch_size` (so
  nothing recompiles) and trimmed. Batch i uses fold_in(key(seed), i)."""
  import jax  # pylint: disable=g-import-not-at-top
  labels = np.asarray(labels, np.int32)
  rng = jax.random.key(seed)
  for i, begin in enumerate(range(0, len(labels), batch_size)):
    chunk = labels[begin:begin + batch_size]
    padded = np.concatenate([chunk, np.full(batch_size - len(chunk), chunk[-1], np.int32)])
    idx, img = sampler(var_params, vae_params, padded, jax.random.fold_in(rng, i), **knobs)
    n = len(chunk)
    yield [np.asarray(x)[:n] for x in idx], np.asarray(img)[:n]


def image_grid(img_NHWC: np.ndarray, rows: int) -> np.ndarray:
  """(rows * cols, H, W, 3) in [0, 1] -> uint8 (rows * H, cols * W, 3)."""
  n, h, w, c = img_NHWC.shape
  cols = n // rows
  grid = img_NHWC.reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c)
  return np.round(np.clip(grid, 0, 1) * 255).astype(np.uint8)


def check_knob_flags(f) -> None:
  """ConfigError (one line) for --cfg, --top_k or --top_p out of range (NaN included), before any loading."""
  from var_jax.models import sampling  # pylint: disable=g-import-not-at-top
  try:
    sampling.check_knobs(f.cfg, f.top_k, f.top_p)
  except ValueError as e:
    raise errors.ConfigError(f'--{e}') from None


def _checked_flags():
  """The flags, checked before anything is loaded; ConfigError (one line) for bad ones."""
  f = flags.FLAGS
  if bool(f.var) == bool(f.workdir):
    raise errors.ConfigError('give exactly one of --var (with --tokenizer) or --workdir')
  if f.var and not f.tokenizer:
    raise errors.ConfigError('--var needs --tokenizer')
  if f.samples_per_class <= 0 or f.batch_size <= 0:
    raise errors.ConfigError('--samples_per_class and --batch_size must be positive')
  try:
    classes = [int(c) for c in f.classes]
  except ValueError:
    raise errors.ConfigError(f'--classes must be integers, got {",".join(f.classes)}') from None
  check_knob_flags(f)
  paths.check_folder(f.out_dir, '--out_dir')
  model_config = None
  if f.model_config:
    try:
      model_config = json.loads(f.model_config)
    except ValueError as e:
      raise errors.ConfigError(f'--model_config: not JSON ({e})') from None
  return f, classes, model_config


def main(argv: Sequence[str]) -> None:
  cli.no_positional(argv)
  f, classes, model_config = _checked_flags()

  import PIL.Image  # pylint: disable=g-import-not-at-top
  import tqdm  # pylint: disable=g-import-not-at-top
  from var_jax.models import next_token_sampling  # pylint: disable=g-import-not-at-top
  from var_jax.models import var as var_lib  # pylint: disable=g-import-not-at-top

  var_model, var_params, vae_model, vae_params = load_models(
      var=f.var, tokenizer=f.tokenizer, workdir=f.workdir, step=f.step, model_config=model_config)
  try:
    var_lib.check_labels(np.asarray(classes), var_model.num_classes, allow_uncond=False)
  except ValueError as e:
    raise errors.ConfigError(f'--classes: {e}') from None

  sampler = next_token_sampling.make_sampler(var_model, vae_model)  # any ordering
  labels = np.repeat(np.asarray(classes, np.int32), f.samples_per_class)
  knobs = dict(cfg=f.cfg, top_k=min(f.top_k, var_model.vocab_size), top_p=f.top_p, more_smooth=f.more_smooth)
  batches = sample_batches(sampler, var_params, vae_params, labels, batch_size=f.batch_size, seed=f.seed, **knobs)
  total = -(-len(labels) // f.batch_size)
  idx_parts, img_parts = [], []
  for idx, img in tqdm.tqdm(batches, total=total, desc='sampling', unit='batch'):
    idx_parts.append(idx)
    img_parts.append(img)

  os.makedirs(f.out_dir, exist_ok=True)
  png = os.path.join(f.out_dir, 'samples.png')
  PIL.Image.fromarray(image_grid(np.concatenate(img_parts), rows=len(classes))).save(png)
  tokens = {f'idx_{k}': np.concatenate([p[k] for p in idx_parts]) for k in range(len(var_model.patch_nums))}
  npz = os.path.join(f.out_dir, 'tokens.npz')
  np.savez(npz, labels=labels, patch_nums=np.asarray(var_model.patch_nums), **tokens)
  print(f'wrote {png} ({len(classes)} rows x {f.samples_per_class}) and {npz}')


def run() -> None:
  _define_flags()
  cli.run(main, prog=PROG)


if __name__ == '__main__':
  run()
