"""Next-scale against next-token on ImageNet 256, for a cluster: the VAR paper's recipe for both orderings.

  # the tokenizers: the official multi-scale one, and a single-scale one (16x16 map) of the same architecture
  python -m var_jax.train --config=experiments/orderings_imagenet.py:tokenizer_raster --workdir=/ckpt/tok_raster
  # the two sweeps, same depths, data, epochs, batch and learning-rate rules
  python -m var_jax.sweep --launcher=slurm --sbatch_args="--nodes=4" \
      --config=experiments/orderings_imagenet.py:next_scale,/ckpt/vae_ch160v4096z32.pth --workdir=/ckpt/ord/next_scale
  python -m var_jax.sweep --launcher=slurm --sbatch_args="--nodes=4" \
      --config=experiments/orderings_imagenet.py:raster,/ckpt/tok_raster/tokenizer --workdir=/ckpt/ord/raster
  python -m var_jax.orderings --root=/ckpt/ord

The argument is ORDER,TOKENIZER[,DEPTH,...]. `next_scale` is experiments/var_imagenet_scaling.py unchanged
(680 tokens over scales 1..16). `raster` swaps the model for task 'next_token' on the single-scale
tokenizer's 16 x 16 map (256 tokens), keeping every other key and rule. The tokenizers differ by their
scales only (experiments/tokenizer_imagenet.py, and `:tokenizer_raster` = that with patch_nums (16,)):
compare their reconstruction (the tokenizer task's eval PSNR, and FD of reconstructions) before the
models; the comparison is only fair when those are close. Default depths: 6 to 20, every 2.
"""
import importlib.util
import os

from var_jax.train import config as config_lib

DEPTHS = tuple(range(6, 21, 2))
RASTER_PATCH_NUMS = (16,)


def _experiment(name, arg):
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f'{name}.py')
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def _as_next_token(var_base):
  """The VAR base config with the model and tokenizer groups of task 'next_token'."""
  c = config_lib.base_config('next_token')
  for key in var_base.keys():
    if key not in ('task', 'model', 'tokenizer'):
      c[key] = var_base[key]
  c.model.update(dict(dtype=var_base.model.dtype, patch_nums=RASTER_PATCH_NUMS))
  c.tokenizer.update(dict(path=var_base.tokenizer.path, patch_nums=RASTER_PATCH_NUMS))
  return c


def get_config(arg=None):
  if arg == 'tokenizer_raster':
    c = _experiment('tokenizer_imagenet', None)
    c.tokenizer.patch_nums = RASTER_PATCH_NUMS
    return c
  order, _, rest = (arg or '').partition(',')
  if order not in ('next_scale', 'raster') or not rest:
    raise ValueError(f'experiments/orderings_imagenet.py: argument {arg!r}; expected '
                     'next_scale|raster,TOKENIZER[,DEPTH,...] or tokenizer_raster')
  depths = rest.split(',')[1:]
  sweep = _experiment('var_imagenet_scaling', ','.join([rest.split(',')[0], *(depths or map(str, DEPTHS))]))
  if order == 'raster':
    sweep.base = _as_next_token(sweep.base)
  return sweep
