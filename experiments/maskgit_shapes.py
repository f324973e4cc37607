"""MaskGIT (masked parallel decoding) on the demo's 16px plain shapes: the CPU scaling sweep of the third ordering.

  # a single-scale tokenizer of the demo's recipe (8x8 map, 256 codes), and its tokens
  python -m var_jax.data --config=experiments/tokenizer_shapes.py:demo --config.data.data_dir=DATA
  python -m var_jax.train --config=experiments/maskgit_shapes.py:tokenizer --workdir=ROOT/tokenizer \
      --config.data.data_dir=DATA
  python -m var_jax.tokenize --config=experiments/maskgit_shapes.py:tokenizer --config.data.data_dir=DATA \
      --config.tokenizer.path=ROOT/tokenizer/tokenizer --out=ROOT/tokens --split=train   # then --split=validation
  # the sweep: five sizes on those tokens
  python -m var_jax.sweep --config=experiments/maskgit_shapes.py --workdir=ROOT/sweep \
      --config.base.tokenizer.path=ROOT/tokenizer/tokenizer --config.base.data.path=ROOT/tokens

`:tokenizer` is experiments/tokenizer_shapes.py:demo with one scale, `patch_nums = (8,)`: 64 tokens an
image, the map MaskGIT decodes in 8 steps. Sizes grow in depth and width together (heads of 32 channels),
every size trains the same steps, with experiments/shapes_scaling.py's learning-rate rule. Samples of every
size are scored with the shapes classifier (experiments/classifier_shapes.py:demo) by
`python -m var_jax.demo.quality --out=ROOT` (ROOT/sweep, ROOT/classifier/classifier, ROOT/tokenizer).

`:tiny` is a 2-size, 4-step miniature; `:test` one 3-step training config on random tokens (tests).
"""
import importlib.util
import os

import ml_collections

from var_jax.train import config as config_lib

PATCH_NUMS = (8,)
# (depth, width): 40K, 121K, 195K, 410K and 998K parameters with vocab 256 (8x8 map).
SIZES = ((1, 32), (1, 64), (2, 64), (2, 96), (3, 128))
SETTINGS = {'full': dict(sizes=SIZES, steps=400, batch_size=16, warmup=20, eval_every=400, eval_batches=8,
                         eval_batch=128, steps_per_call=25),
            'tiny': dict(sizes=SIZES[:2], steps=4, batch_size=8, warmup=1, eval_every=2, eval_batches=2,
                         eval_batch=8, steps_per_call=2)}


def peak_lr(cfg):
  """6e-3 at width 32, falling as 1/sqrt(width), as experiments/shapes_scaling.py."""
  return 6e-3 * (32 / cfg.model.embed_dim) ** 0.5


def _tokenizer_shapes(arg):
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'tokenizer_shapes.py')
  spec = importlib.util.spec_from_file_location('tokenizer_shapes', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def base_config(size: str) -> ml_collections.ConfigDict:
  s = SETTINGS[size]
  c = config_lib.base_config('maskgit')
  c.seed = 0
  c.batch_size = s['batch_size']
  c.model.update(dict(vocab_size=256, patch_nums=PATCH_NUMS, num_classes=8, drop_path_rate=0.0))
  tok = _tokenizer_shapes('demo').tokenizer
  c.tokenizer.update(dict(tok.to_dict(), patch_nums=PATCH_NUMS, seed=1))
  c.optim.update(dict(warmup_steps=s['warmup'], schedule='cos', final_lr_frac=0.05))
  c.mesh.update(dict(data=-1, fsdp=1, tensor=1))
  c.checkpoint.update(dict(every_steps=s['steps'], keep=1))
  c.log.every_steps = 25
  c.train.steps_per_call = s['steps_per_call']
  c.eval.update(dict(every_steps=s['eval_every'], batches=s['eval_batches'], batch_size=s['eval_batch']))
  c.data.update(dict(name='tokens', image_size=16))
  return c


def get_config(arg=None):
  if arg == 'tokenizer':
    c = _tokenizer_shapes('demo')
    c.tokenizer.patch_nums = PATCH_NUMS
    return c
  if arg == 'test':
    c = base_config('tiny')
    c.update(dict(steps=3, batch_size=4))
    c.model.update(dict(vocab_size=64, patch_nums=(4,), depth=1, embed_dim=32, num_heads=2))
    c.tokenizer.update(dict(vocab_size=64, z_channels=8, ch=8, ch_mult=(1, 2), norm_groups=4, patch_nums=(4,)))
    c.data.update(dict(name='synthetic_tokens'))
    c.train.steps_per_call = 1
    c.checkpoint.update(dict(every_steps=2, keep=3, async_save=False))
    c.log.every_steps = 1
    c.eval.update(dict(every_steps=3, batches=1, batch_size=4))
    return c
  size = arg or 'full'
  if size not in SETTINGS:
    raise ValueError(f'experiments/maskgit_shapes.py: unknown argument {arg!r}; expected one of '
                     f'{sorted(SETTINGS)}, "tokenizer" or "test"')
  s = SETTINGS[size]
  sweep = ml_collections.ConfigDict()
  sweep.base = base_config(size)
  sweep.axes = [('steps', (s['steps'],))]
  sweep.runs = [{'model.depth': d, 'model.embed_dim': w, 'model.num_heads': max(1, w // 32)} for d, w in s['sizes']]
  sweep.derived = [('optim.lr', peak_lr)]
  return sweep
