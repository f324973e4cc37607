"""`python -m var_jax.sample`: class-conditional samples, as a PNG grid (one row per class) and tokens (.npz).

  # a converted official checkpoint (.pth or .npz state dict) and its tokenizer
  python -m var_jax.sample --var=var_d16.pth --tokenizer=vae_ch160v4096z32.pth --out_dir=samples
  # a training run folder (config.json + checkpoints/); the tokenizer comes from its config
  python -m var_jax.sample --workdir=runs/d4 --classes=0,1,2 --samples_per_class=8 --out_dir=samples

Any ordering a run trained samples (`var_jax.generate.orderings`): a run of task 'next_token' (raster order)
one token per step, one of task 'maskgit' in 8 parallel decoding steps (tokens.npz then holds their one map
as idx_0). Sampling goes through the one driver
(`var_jax.eval.generate.DataParallelSampler`): sample i draws with fold_in(key(seed), i). Defaults are the
official evaluation setting (cfg 1.5, top-k 900, top-p 0.96); top-k is capped at the vocabulary size. Writes
`<out_dir>/samples.png` and `<out_dir>/tokens.npz` (labels, idx_<k>).
"""
from __future__ import annotations

import os
from typing import Sequence

from absl import flags
import numpy as np
import PIL.Image

from var_jax import cli
from var_jax import errors
from var_jax import paths
from var_jax.cli import sampling_flags
from var_jax.models import var as var_lib

PROG = 'var-sample'


def _define_flags() -> None:
  sampling_flags.define_source()
  sampling_flags.define_knobs(more_smooth='Gumbel-softmax visualisation mode.')
  flags.DEFINE_list('classes', ['0', '1', '2', '3'], 'Class labels, one grid row each.')
  flags.DEFINE_integer('samples_per_class', 4, 'Samples per class (grid columns).')
  flags.DEFINE_integer('batch_size', 16, 'Images per compiled batch (a multiple of the local device count).')
  flags.DEFINE_string('out_dir', 'samples', 'Output directory.')


def image_grid(img_NHWC: np.ndarray, rows: int) -> np.ndarray:
  """(rows * cols, H, W, 3) images (uint8, or floats in [0, 1]) -> uint8 (rows * H, cols * W, 3)."""
  if img_NHWC.dtype != np.uint8:
    img_NHWC = np.round(np.clip(img_NHWC, 0, 1) * 255).astype(np.uint8)
  n, h, w, c = img_NHWC.shape
  cols = n // rows
  return img_NHWC.reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c)


def _checked_flags():
  """The flags, checked before anything is loaded; ConfigError (one line) for bad ones."""
  f = flags.FLAGS
  sampling_flags.check(f)
  if f.samples_per_class <= 0 or f.batch_size <= 0:
    raise errors.ConfigError('--samples_per_class and --batch_size must be positive')
  try:
    classes = [int(c) for c in f.classes]
  except ValueError:
    raise errors.ConfigError(f'--classes must be integers, got {",".join(f.classes)}') from None
  paths.check_folder(f.out_dir, '--out_dir')
  return f, classes


def main(argv: Sequence[str]) -> None:
  cli.no_positional(argv)
  f, classes = _checked_flags()
  gen = sampling_flags.load(f)
  var_lib.check_labels(np.asarray(classes), gen.num_classes, allow_uncond=False, what='--classes')
  labels = np.repeat(np.asarray(classes, np.int32), f.samples_per_class)
  tokens, images = gen.driver(f.batch_size).draw(labels, np.arange(len(labels)), f.seed,
                                                 **sampling_flags.knobs(f, gen))
  os.makedirs(f.out_dir, exist_ok=True)
  png = os.path.join(f.out_dir, 'samples.png')
  PIL.Image.fromarray(image_grid(images, rows=len(classes))).save(png)
  npz = os.path.join(f.out_dir, 'tokens.npz')
  np.savez(npz, labels=labels, patch_nums=np.asarray(gen.model.patch_nums),
           **{f'idx_{k}': idx for k, idx in enumerate(tokens)})
  print(f'wrote {png} ({len(classes)} rows x {f.samples_per_class}) and {npz}')


def run() -> None:
  _define_flags()
  cli.run(main, prog=PROG)

