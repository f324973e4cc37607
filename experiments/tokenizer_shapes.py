"""Multi-scale VQVAE tokenizer for 64x64 synthetic shapes, trained on a CPU in about five minutes.

  python -m var_jax.train --config=experiments/tokenizer_shapes.py --workdir=runs/tok_shapes

A small encoder/decoder (ch 8, widths 8-16-32: two 2x downsamplings to a 16x16 latent), 256 codes
of 16 channels over eight scales (1, 2, 3, 4, 6, 8, 12, 16). Dead codes unused for 50 steps are
restarted from the encoder's outputs every 25 steps, which keeps the small scales from collapsing.
The images' thin stripes are the hard part: a CPU budget buys about 16 dB PSNR; more steps (or
`--config.tokenizer.ch=32`) buy more. The run ends
with `runs/tok_shapes/tokenizer` (load it by path: `--config.tokenizer.path=runs/tok_shapes/tokenizer`)
and `recon_grid.png` (inputs, then reconstructions from the first 1..8 scales).
`:demo` is what `make demo` trains, on its own images (DEMO_DATA: one flat shape of eight kinds on a flat
background, 16px): ch 16, widths 16-32 (one downsampling to 8x8 latents), 256 cosine-matched codes of 16 channels
over scales 1, 2, 4, 8, 600 steps of batch 16; about 22-23 dB PSNR and SSIM 0.72 on the held-out images.
experiments/shapes_scaling.py trains VAR on its tokens. `:test` is a 16px miniature for tests.
"""
from var_jax.train import config as config_lib

PATCH_NUMS = (1, 2, 3, 4, 6, 8, 12, 16)
# The demo's images: one flat shape of eight well-told-apart kinds, inside the frame, on a flat background,
# used as drawn (mid_ratio 1: no resize or crop), as the shapes classifier sees them.
DEMO_DATA = dict(image_size=16, mid_ratio=1.0, num_train=8192, num_eval=1024, max_shapes=1,
                 synthetic_style='plain', synthetic_classes='circle,square,triangle,star,cross,ring,crescent,arrow',
                 synthetic_radius=(0.3, 0.45))


def get_config(arg=None):
  c = config_lib.base_config('tokenizer')
  c.seed = 0
  c.steps = 600
  c.batch_size = 8
  c.tokenizer.update(dict(vocab_size=256, z_channels=16, ch=8, ch_mult=(1, 2, 4),
                          num_res_blocks=1, norm_groups=4, beta=0.25, quant_resi=0.5,
                          share_quant_resi=4, patch_nums=PATCH_NUMS, seed=0))
  c.optim.update(dict(lr=2e-3, warmup_steps=20, schedule='cos', final_lr_frac=0.1,
                      weight_decay=0.0, grad_clip=1.0))
  c.loss.update(dict(l1=1.0, l2=1.0, vq=1.0))
  c.codebook.update(dict(window=50, restart_every=25))
  c.mesh.update(dict(data=-1, fsdp=1, tensor=1))
  c.checkpoint.update(dict(every_steps=100, keep=2))
  c.log.every_steps = 25
  c.eval.update(dict(every_steps=c.steps, batches=4, batch_size=32, grid_images=8))
  c.data.update(dict(name='synthetic_shapes', image_size=64, hflip=False, worker_count=0,
                     prefetch=2, train_split='train', eval_split='validation'))

  if arg == 'demo':  # what `make demo` trains: the plain 16px shapes, 8x8 latents, scales 1, 2, 4, 8
    c.steps = 600
    c.batch_size = 16
    c.optim.lr = 1e-3
    c.tokenizer.update(dict(vocab_size=256, z_channels=16, ch=16, ch_mult=(1, 2), norm_groups=8,
                            using_znorm=True, patch_nums=(1, 2, 4, 8)))
    c.data.update(DEMO_DATA)
    c.checkpoint.every_steps = 300
    c.eval.update(dict(every_steps=c.steps, batches=8, batch_size=64))
  elif arg == 'test':
    c.steps = 10
    c.optim.warmup_steps = 2
    c.tokenizer.update(dict(vocab_size=32, z_channels=8, ch=8, ch_mult=(1, 2),
                            patch_nums=(1, 2, 4, 8)))
    c.data.update(dict(image_size=16, num_train=512, num_eval=64))
    c.codebook.update(dict(window=4, restart_every=4))
    c.checkpoint.update(dict(every_steps=3, keep=3))
    c.log.every_steps = 1
    c.eval.update(dict(every_steps=100, batches=1, batch_size=8, grid_images=4))
  elif arg:
    raise ValueError(f'experiments/tokenizer_shapes.py: unknown argument {arg!r}; expected '
                     'nothing, "demo" or "test"')
  return c
