"""Smoke test: a tiny VAR on 32px synthetic shapes with a randomly initialised tiny tokenizer.

A train step takes well under a second on one CPU core. `--config=experiments/smoke.py:tokens`
swaps the images for in-memory random tokens (no dataset needed).
"""
from var_jax.train import config as config_lib

PATCH_NUMS = (1, 2, 3, 4)


def get_config(arg=None):
  if arg not in (None, '', 'tokens'):
    raise ValueError(f'experiments/smoke.py: unknown argument {arg!r}; expected nothing or "tokens"')
  c = config_lib.base_config('var')
  c.seed = 0
  c.steps = 20
  c.batch_size = 8

  c.model.update(dict(vocab_size=64, cvae=8, patch_nums=PATCH_NUMS, num_classes=10, depth=2,
                      embed_dim=64, num_heads=8))
  # 32px images -> 4x4 latents (three 2x downsamplings).
  c.tokenizer.update(dict(vocab_size=64, z_channels=8, ch=16, ch_mult=(1, 1, 2, 2),
                          num_res_blocks=1, norm_groups=8, share_quant_resi=4,
                          patch_nums=PATCH_NUMS, seed=1))

  c.optim.base_lr = 0.03  # peak lr 0.03 * 8 / 256 ~ 1e-3
  c.mesh.update(dict(data=-1, fsdp=1, tensor=1))
  c.sharding.fsdp_min_size = 2**12  # small enough that the smoke model's matrices count
  c.checkpoint.update(dict(every_steps=10, keep=2))
  c.log.every_steps = 5
  c.eval.update(dict(every_steps=10, batches=2))

  if arg == 'tokens':
    c.data.name = 'synthetic_tokens'
  else:
    c.data.update(dict(name='synthetic_shapes', image_size=32, num_train=2048, num_eval=256,
                       num_threads=1, prefetch=1, worker_count=0))
  return c
