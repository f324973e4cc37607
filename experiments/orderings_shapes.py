"""Next-scale (VAR) against next-token (raster) and masked decoding (MaskGIT) on 32px synthetic shapes: the
CPU-sized comparison sweep.

One sweep per ordering, on the same data, batch, steps, learning-rate rule and depths, into one root each:

  python -m var_jax.sweep --config=experiments/orderings_shapes.py:next_scale --workdir=ROOT/next_scale
  python -m var_jax.sweep --config=experiments/orderings_shapes.py:raster --workdir=ROOT/raster
  python -m var_jax.sweep --config=experiments/orderings_shapes.py:masked --workdir=ROOT/masked

Tokenizers (the same VQVAE architecture, 64 codes of 8 channels, 32px images onto a 4x4 latent):
  next_scale  the multi-scale tokenizer, scales (1, 2, 3, 4): 30 tokens per image;
  raster      the single-scale one, `patch_nums = (4,)` (a plain VQVAE): 16 tokens in raster order;
  masked      the same single-scale one: 16 tokens decoded in 8 parallel steps.
By default both tokenizers are randomly initialised from the same seed (as experiments/shapes_scaling.py), which
makes the comparison one of the transformers on equally arbitrary codes. For trained tokenizers:

  python -m var_jax.train --config=experiments/orderings_shapes.py:tokenizer_raster --workdir=ROOT/tok_raster
  python -m var_jax.train --config=experiments/tokenizer_shapes.py:demo --workdir=ROOT/tok_scales
  ... then add --config.base.tokenizer.path=ROOT/tok_{raster,scales}/tokenizer to the sweeps above (tok_raster
  for raster and masked).

`:tokenizer_raster` is experiments/tokenizer_shapes.py:demo with one scale; both record their
reconstruction PSNR in DONE (measured figures: experiments/RESULTS.md, 'Next-scale against raster order').

`:next_scale_tiny`, `:raster_tiny` and `:masked_tiny` are 2-depth, 3-step miniatures; `:test` is one 3-step
next-token training config (tests/test_next_token.py). `var_jax.scaling.orderings` puts the results side by side.
"""
import importlib.util
import os

import ml_collections

from var_jax.train import config as config_lib

ORDERS = {'next_scale': ('var', (1, 2, 3, 4)), 'raster': ('next_token', (4,)), 'masked': ('maskgit', (4,))}
SIZES = {'full': dict(depths=(1, 2, 3), steps=300, eval_every=100, eval_batches=8),
         'tiny': dict(depths=(1, 2), steps=3, eval_every=3, eval_batches=1)}


def peak_lr(cfg):
  """2e-3 at depth 1, falling as 1/sqrt(depth) (width grows with depth), as experiments/shapes_scaling.py."""
  return 2e-3 / cfg.model.depth ** 0.5


def base_config(order: str) -> ml_collections.ConfigDict:
  """The training config shared by every run of `order`."""
  task, patch_nums = ORDERS[order]
  c = config_lib.base_config(task)
  c.seed = 0
  c.batch_size = 16
  c.model.update(dict(vocab_size=64, patch_nums=patch_nums, num_classes=10))
  if task == 'var':
    c.model.cvae = 8
  c.tokenizer.update(dict(vocab_size=64, z_channels=8, ch=16, ch_mult=(1, 1, 2, 2), num_res_blocks=1,
                          norm_groups=8, share_quant_resi=4, patch_nums=patch_nums, seed=1))
  c.mesh.update(dict(data=-1, fsdp=1, tensor=1))
  c.checkpoint.update(dict(every_steps=100, keep=1))
  c.data.update(dict(name='synthetic_shapes', image_size=32, num_train=2048, num_eval=256, num_threads=1,
                     prefetch=1, worker_count=0))
  return c


def _tokenizer_shapes(arg):
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'tokenizer_shapes.py')
  spec = importlib.util.spec_from_file_location('tokenizer_shapes', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def get_config(arg=None):
  if arg == 'test':
    c = base_config('raster')
    c.update(dict(steps=3, batch_size=4))
    c.model.update(dict(depth=1, embed_dim=32, num_heads=2))
    c.tokenizer.update(dict(ch=8, ch_mult=(1, 2), norm_groups=4))  # never run on tokens: only its init
    c.data.update(dict(name='synthetic_tokens'))
    c.checkpoint.update(dict(every_steps=1, keep=3, async_save=False))
    c.log.every_steps = 1
    c.eval.update(dict(every_steps=3, batches=1))
    return c
  if arg == 'tokenizer_raster':
    c = _tokenizer_shapes('demo')
    c.tokenizer.patch_nums = ORDERS['raster'][1]
    return c
  order, _, size = (arg or '').partition('_tiny')
  size = 'tiny' if arg and arg.endswith('_tiny') else 'full'
  if order not in ORDERS:
    raise ValueError(f'experiments/orderings_shapes.py: unknown argument {arg!r}; expected one of '
                     f'{sorted(ORDERS)} (optionally with _tiny), "tokenizer_raster" or "test"')
  s = SIZES[size]
  base = base_config(order)
  base.log.every_steps = s['eval_every']
  base.eval.update(dict(every_steps=s['eval_every'], batches=s['eval_batches']))
  sweep = ml_collections.ConfigDict()
  sweep.base = base
  sweep.axes = [('model.depth', s['depths']), ('steps', (s['steps'],))]
  sweep.derived = [('optim.lr', peak_lr)]
  return sweep
