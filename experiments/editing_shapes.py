"""The editing figure's models (experiments/RESULTS.md, figures/editing_shapes.png): a small tokenizer and VAR
on 16px plain shapes of four kinds, trained from scratch in about 20 minutes on a 2-core CPU.

  python -m var_jax.train --config=experiments/editing_shapes.py:tokenizer --workdir=runs/tok16
  python -m var_jax.train --config=experiments/editing_shapes.py:var --workdir=runs/var16 \
      --config.tokenizer.path=runs/tok16/tokenizer
  python -m var_jax.edit --workdir=runs/var16 --image=shapes/ --box=0.125,0.125,0.875,0.875 --class=2 \
      --out_dir=edited

`:tokenizer` is experiments/tokenizer_shapes.py:test on the figure's data for 2000 steps; `:var` a depth-2 VAR
(166K params) on its tokens for 2400 steps. `:var` reads its tokenizer from `tokenizer.path` (default
runs/tok16/tokenizer, the folder the first command writes).
"""
import importlib.util
import os

DATA = dict(synthetic_style='plain', max_shapes=1, synthetic_classes='circle,square,triangle,cross',
            synthetic_radius=(0.25, 0.45), num_train=4096, num_eval=256, image_size=16)
TOKENIZER = 'runs/tok16/tokenizer'


def _experiment(name: str, arg):
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f'{name}.py')
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def get_config(arg=None):
  if arg == 'tokenizer':
    c = _experiment('tokenizer_shapes', 'test')
    c.update(dict(steps=2000, batch_size=16))
    c.optim.warmup_steps = 20
    c.codebook.update(dict(window=50, restart_every=25))
  elif arg == 'var':
    c = _experiment('smoke', None)
    c.tokenizer.path = TOKENIZER
    c.model.update(dict(patch_nums=(1, 2, 4, 8), vocab_size=32, cvae=8, num_classes=4, depth=2, embed_dim=64,
                        num_heads=4))
    c.update(dict(steps=2400, batch_size=16))
    c.optim.update(dict(lr=3e-3, warmup_steps=50))
  else:
    raise ValueError(f'experiments/editing_shapes.py: unknown argument {arg!r}; expected "tokenizer" or "var"')
  c.data.update(DATA)
  return c
