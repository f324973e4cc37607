"""Tiny CPU scaling sweep on synthetic shapes (used by the demo): VAR depths 1-4, width 64 x depth.

  python -m var_jax.sweep --config=experiments/shapes_scaling.py --workdir=ROOT
  python -m var_jax.sweep --config=experiments/shapes_scaling.py:tiny --workdir=ROOT   # for tests

32px images, a 4-scale pyramid (1, 2, 3, 4) and a small randomly initialised tokenizer, as in
experiments/smoke.py. To train on a tokenizer and token dataset made earlier (as the demo does), add
--config.base.tokenizer.path=TOK --config.base.data.name=tokens --config.base.data.path=TOKENS.
Every size trains for the same number of steps; the learning-rate rule is in `derived`.
"""
import ml_collections

from var_jax.train import config as config_lib

PATCH_NUMS = (1, 2, 3, 4)
SIZES = {'full': dict(depths=(1, 2, 3, 4), steps=500, eval_every=100, eval_batches=16),
         'tiny': dict(depths=(1, 2), steps=4, eval_every=2, eval_batches=4)}


def peak_lr(cfg):
  """2e-3 at depth 1, falling as 1/sqrt(depth) (width grows with depth)."""
  return 2e-3 / cfg.model.depth ** 0.5


def get_config(arg=None):
  size = arg or 'full'
  if size not in SIZES:
    raise ValueError(f'experiments/shapes_scaling.py: unknown argument {arg!r}; expected one of {sorted(SIZES)}')
  s = SIZES[size]
  base = config_lib.base_config()
  base.seed = 0
  base.batch_size = 16
  base.model.update(dict(vocab_size=64, cvae=8, patch_nums=PATCH_NUMS, num_classes=10))
  base.tokenizer.update(dict(vocab_size=64, z_channels=8, ch=16, ch_mult=(1, 1, 2, 2), num_res_blocks=1,
                             norm_groups=8, share_quant_resi=4, patch_nums=PATCH_NUMS, seed=1))
  base.mesh.update(dict(data=-1, fsdp=1, tensor=1))
  base.checkpoint.update(dict(every_steps=50, keep=1))
  base.log.every_steps = s['eval_every']
  base.eval.update(dict(every_steps=s['eval_every'], batches=s['eval_batches']))
  base.data.update(dict(name='synthetic_shapes', image_size=32, num_train=2048, num_eval=256, num_threads=1,
                        prefetch=1, worker_count=0))

  sweep = ml_collections.ConfigDict()
  sweep.base = base
  sweep.axes = [('model.depth', s['depths']), ('steps', (s['steps'],))]
  sweep.derived = [('optim.lr', peak_lr)]
  return sweep
