"""Fine-tuning a released VAR (var_d16.pth) on one's own image folder, with its own number of classes.

  python -m var_jax.train --config=experiments/var_finetune.py --workdir=runs/finetune \
      --config.init.path=var_d16.pth --config.tokenizer.path=vae_ch160v4096z32.pth \
      --config.data.path=my_images --config.model.num_classes=12

`init.path` gives the starting params (an official .pth/.npz or a var_jax run folder); a different
`model.num_classes` re-initialises only the class embedding. The optimizer starts afresh, with a short warmup
and a lower peak than pre-training. `:smoke` is the same recipe on a tiny model and random tokens (tests).
"""
from var_jax.train import config as config_lib


def get_config(arg=None):
  if arg not in (None, '', 'smoke'):
    raise ValueError(f'experiments/var_finetune.py: unknown argument {arg!r}; expected nothing or "smoke"')
  c = config_lib.base_config('var')
  c.steps = 5000
  c.batch_size = 256
  c.model.update(dict(depth=16, num_classes=1000, cond_drop_rate=0.1))  # the released d16's architecture
  c.init.path = 'var_d16.pth'
  c.tokenizer.path = 'vae_ch160v4096z32.pth'
  c.optim.update(dict(lr=1e-4, warmup_steps=100, weight_decay=0.05, schedule='lin0'))
  c.data.update(dict(name='image_folder', image_size=256, hflip=True))
  c.checkpoint.update(dict(every_steps=500, keep=2))
  c.eval.update(dict(every_steps=500, batches=10))
  if arg == 'smoke':
    patch_nums = (1, 2)
    c.steps, c.batch_size = 40, 4
    c.init.path = None  # given on the command line
    c.model.update(dict(vocab_size=16, cvae=4, patch_nums=patch_nums, num_classes=10, depth=1,
                        embed_dim=32, num_heads=2))
    c.tokenizer.update(dict(path=None, vocab_size=16, z_channels=4, ch=8, ch_mult=(1, 1), num_res_blocks=1,
                            norm_groups=4, patch_nums=patch_nums, seed=1))
    c.optim.update(dict(lr=1e-3, warmup_steps=0))
    c.data.name = 'synthetic_tokens'
    c.checkpoint.update(dict(every_steps=3, keep=3))
    c.log.every_steps = 1
    c.eval.update(dict(every_steps=100, batches=1))
  return c
