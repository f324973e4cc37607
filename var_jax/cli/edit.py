"""`python -m var_jax.edit`: zero-shot in-painting and out-painting of images with a VAR.

  # regenerate a box (fractions y0,x0,y1,x1 of the image) of one image, unconditionally
  python -m var_jax.edit --var=var_d16.pth --tokenizer=vae_ch160v4096z32.pth --image=dog.png \
      --box=0.25,0.25,0.75,0.75 --mode=inpaint --out_dir=edited
  # keep the box and regenerate the rest, as class 207, for a folder of images of any size
  python -m var_jax.edit --workdir=runs/d16 --image=photos/ --box=0.2,0.2,0.8,0.8 --mode=outpaint \
      --class=207 --resize
  # a painted mask (white = the region) instead of a box
  python -m var_jax.edit --workdir=runs/d16 --image=a.png,b.png --mask=mask.png

The region is the box or the mask's white part: in-painting regenerates it, out-painting keeps it and
regenerates the rest (`var_jax.models.editing`, as the official zero-shot demo). Without --class the model is
unconditional (plain in-/out-painting); with one it is class-conditional editing. For each image IMG.png it
writes, in --out_dir (default: next to the image), IMG_MODE.png (the edited image) and IMG_MODE_panel.png
(the input and the edit side by side, the region outlined).
"""
from __future__ import annotations

import os
from typing import Sequence

from absl import flags
import jax
import numpy as np
import PIL.Image

from var_jax import cli
from var_jax import errors
from var_jax import paths
from var_jax.cli import sampling_flags
from var_jax.models import editing

PROG = 'var-edit'
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.webp', '.bmp')
OUTLINE_RGB = (255, 40, 40)


def _define_flags() -> None:
  sampling_flags.define_source()
  sampling_flags.define_knobs()
  flags.DEFINE_list('image', None, 'Images to edit: files and/or folders of images.')
  flags.DEFINE_list('box', None, 'The region as y0,x0,y1,x1, fractions of the image in [0, 1].')
  flags.DEFINE_string('mask', None, 'The region as a mask image (white = the region), instead of --box.')
  flags.DEFINE_enum('mode', 'inpaint', ['inpaint', 'outpaint'], 'inpaint: regenerate the region; outpaint: '
                    'keep it and regenerate the rest.')
  flags.DEFINE_integer('class', None, 'Class to edit towards (default: unconditional).')
  flags.DEFINE_bool('resize', False, 'Resize images to the size the tokenizer takes.')
  flags.DEFINE_integer('batch_size', 8, 'Images per compiled batch.')
  flags.DEFINE_string('out_dir', None, 'Output folder (default: next to each image).')


def image_files(paths: Sequence[str]) -> list[str]:
  """The image files named, folders expanded (sorted); ConfigError for a missing path or no image."""
  files = []
  for path in paths:
    if os.path.isdir(path):
      files += sorted(os.path.join(path, n) for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTENSIONS))
    elif os.path.exists(path):
      files.append(path)
    else:
      raise errors.ConfigError(f'--image: {path}: no such file or folder')
  if not files:
    raise errors.ConfigError(f'--image: no {"/".join(IMAGE_EXTENSIONS)} images in {",".join(paths)}')
  return files


def read_image(path: str, size: int, resize: bool) -> np.ndarray:
  """(size, size, 3) float32 in [-1, 1]; ConfigError for another size unless `resize`."""
  try:
    img = PIL.Image.open(path).convert('RGB')
  except (OSError, ValueError) as e:
    raise errors.ConfigError(f'{path}: not a readable image ({e})') from None
  if img.size != (size, size):
    if not resize:
      raise errors.ConfigError(f'{path} is {img.size[0]}x{img.size[1]} but the tokenizer takes {size}x{size} '
                               'images; resize it or pass --resize')
    img = img.resize((size, size), PIL.Image.BICUBIC)
  return np.asarray(img, np.float32) / 127.5 - 1


def region_mask(box: Sequence[str] | None, mask: str | None, side: int) -> np.ndarray:
  """(side, side) bool: the last-scale tokens of the region (--box or --mask); ConfigError if it is empty."""
  if bool(box) == bool(mask):
    raise errors.ConfigError('give exactly one of --box or --mask')
  if box:
    try:
      fractions = [float(v) for v in box]
    except ValueError:
      raise errors.ConfigError(f'--box must be 4 numbers y0,x0,y1,x1, got {",".join(box)}') from None
    return editing.box_keep_mask(fractions, side, 'inpaint', what='--box') < 0.5
  try:
    painted = np.asarray(PIL.Image.open(mask).convert('L'))
  except (OSError, ValueError) as e:
    raise errors.ConfigError(f'--mask: {mask}: not a readable image ({e})') from None
  region = editing.keep_mask_from_image(painted, side, 'inpaint') < 0.5
  if not region.any():
    raise errors.ConfigError(f'--mask: {mask} marks no token of the {side}x{side} last scale (white = the '
                             'region)')
  return region


def edit_label(cls: int | None, num_classes: int) -> int:
  """The label to edit with: `cls`, or the unconditional class; ConfigError outside [0, num_classes]."""
  if cls is None:
    return num_classes
  if not 0 <= cls <= num_classes:
    raise errors.ConfigError(f'--class={cls} is outside [0, {num_classes - 1}] (the model has {num_classes} '
                             f'classes; {num_classes} or no --class is unconditional)')
  return cls


def outlined(img_HW3: np.ndarray, region_KK: np.ndarray) -> np.ndarray:
  """uint8 copy of an image in [0, 1] with the token region's border drawn."""
  H, W = img_HW3.shape[:2]
  K = region_KK.shape[0]
  inside = region_KK[np.arange(H) * K // H][:, np.arange(W) * K // W]
  padded = np.pad(inside, 1, mode='edge')
  border = inside & ~(padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
  out = np.round(np.clip(img_HW3, 0, 1) * 255).astype(np.uint8)
  out[border] = OUTLINE_RGB
  return out


def _checked_flags():
  f = flags.FLAGS
  sampling_flags.check(f)
  if not f.image:
    raise errors.ConfigError('--image is required (files or folders)')
  if f.batch_size <= 0:
    raise errors.ConfigError(f'--batch_size must be positive, got {f.batch_size}')
  if f.out_dir:
    paths.check_folder(f.out_dir, '--out_dir')
  return f


def main(argv: Sequence[str]) -> None:
  cli.no_positional(argv)
  f = _checked_flags()
  files = image_files(f.image)

  gen = sampling_flags.load(f)
  if gen.ordering.task != 'var':
    raise errors.ConfigError(f'{gen.source}: editing needs a next-scale (VAR) model, not task '
                             f'{gen.ordering.task!r}')
  var_model, vae_model = gen.model, gen.vae
  label = edit_label(f['class'].value, var_model.num_classes)
  region_KK = region_mask(f.box, f.mask, var_model.patch_nums[-1])
  keep_KK = (region_KK if f.mode == 'outpaint' else ~region_KK).astype(np.float32)
  if keep_KK.min() > 0.5:
    raise errors.ConfigError('--mode=outpaint with a region that covers the whole image: nothing to regenerate')
  images = np.stack([read_image(p, vae_model.image_size, f.resize) for p in files])

  knobs = sampling_flags.knobs(f, gen)
  rng = jax.random.key(f.seed)
  for i, begin in enumerate(range(0, len(files), f.batch_size)):
    chunk = images[begin:begin + f.batch_size]
    padded = np.concatenate([chunk, np.repeat(chunk[-1:], f.batch_size - len(chunk), axis=0)])
    _, edited = editing.edit(gen.sampler, gen.params, gen.vae_params, label, jax.random.fold_in(rng, i), padded,
                             keep_KK, **knobs)
    for path, source, out in zip(files[begin:], chunk, np.asarray(edited)[:len(chunk)]):
      out_dir = f.out_dir or os.path.dirname(os.path.abspath(path))
      os.makedirs(out_dir, exist_ok=True)
      stem = os.path.join(out_dir, f'{os.path.splitext(os.path.basename(path))[0]}_{f.mode}')
      PIL.Image.fromarray(np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)).save(stem + '.png')
      panel = np.concatenate([outlined((source + 1) / 2, region_KK), outlined(out, region_KK)], axis=1)
      PIL.Image.fromarray(panel).save(stem + '_panel.png')
      print(f'wrote {stem}.png and {stem}_panel.png')


def run() -> None:
  _define_flags()
  cli.run(main, prog=PROG)

