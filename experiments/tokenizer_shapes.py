"""Multi-scale VQVAE tokenizer for 64x64 synthetic shapes, trained on a CPU in about five minutes.

  python -m var_jax.train --config=experiments/tokenizer_shapes.py --workdir=runs/tok_shapes

A small encoder/decoder (ch 8, widths 8-16-32-32: three 2x downsamplings to an 8x8 latent), 256
codes of 16 channels over six scales (1, 2, 3, 4, 6, 8). Dead codes are restarted from the
encoder's outputs, which keeps the small scales from collapsing in so short a run. The run ends
with `runs/tok_shapes/tokenizer` (load it by path: `--config.tokenizer.path=runs/tok_shapes/tokenizer`)
and `recon_grid.png` (inputs, then reconstructions from the first 1..6 scales).
`:test` is a 16px miniature for tests.
"""
from var_jax.train import tokenizer_task

PATCH_NUMS = (1, 2, 3, 4, 6, 8)


def get_config(arg=None):
  c = tokenizer_task.base_config()
  c.seed = 0
  c.steps = 250
  c.batch_size = 8
  c.tokenizer.update(dict(vocab_size=256, z_channels=16, ch=8, ch_mult=(1, 2, 4, 4),
                          num_res_blocks=1, norm_groups=4, beta=0.25, quant_resi=0.5,
                          share_quant_resi=4, patch_nums=PATCH_NUMS, seed=0))
  c.optim.update(dict(lr=2e-3, warmup_steps=10, schedule='cos', final_lr_frac=0.1,
                      weight_decay=0.0, grad_clip=1.0))
  c.loss.update(dict(l1=1.0, l2=1.0, vq=1.0))
  c.codebook.update(dict(window=50, restart_every=25))
  c.mesh.update(dict(data=-1, fsdp=1, tensor=1))
  c.checkpoint.update(dict(every_steps=100, keep=2))
  c.log.every_steps = 25
  c.eval.update(dict(every_steps=c.steps, batches=8, batch_size=32, grid_images=8))
  c.data.update(dict(name='synthetic_shapes', image_size=64, hflip=False, worker_count=0,
                     prefetch=2, train_split='train', eval_split='validation'))

  if arg == 'test':
    c.steps = 10
    c.tokenizer.update(dict(vocab_size=32, z_channels=8, ch=8, ch_mult=(1, 2),
                            patch_nums=(1, 2, 4, 8)))
    c.data.image_size = 16
    c.codebook.update(dict(window=4, restart_every=4))
    c.checkpoint.update(dict(every_steps=3, keep=3))
    c.log.every_steps = 1
    c.eval.update(dict(every_steps=100, batches=1, batch_size=8, grid_images=4))
  elif arg:
    raise ValueError(f'experiments/tokenizer_shapes.py: unknown argument {arg!r}; expected '
                     'nothing or "test"')
  return c
