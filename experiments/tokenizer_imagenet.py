"""The official VAR tokenizer architecture trained on ImageNet 256, for clusters.

  python -m var_jax.train --config=experiments/tokenizer_imagenet.py --workdir=gs://.../tok_in256 \
      --config.data.manual_dir=/data/imagenet

ch 160, ch_mult (1, 1, 2, 2, 4), 4096 codes of 32 channels, scales 1..16, 4 partially shared phi
(the released `vae_ch160v4096z32`). The losses follow VQGAN: L1 + L2 reconstruction, the VQ loss,
an LPIPS perceptual loss (give the VGG16/LPIPS weights as an .npz with
`--config.loss.perceptual_path=`; nothing is downloaded) and a PatchGAN hinge discriminator with
the adaptive weight, switched on after 20k steps. Dead codes restart every 1000 steps.
`:no_perceptual` drops the perceptual loss (for runs without the weights file).
"""
from var_jax.train import config as config_lib


def get_config(arg=None):
  c = config_lib.base_config('tokenizer')
  c.seed = 0
  c.steps = 200_000
  c.batch_size = 256
  c.tokenizer.update(dict(vocab_size=4096, z_channels=32, ch=160, ch_mult=(1, 1, 2, 2, 4),
                          num_res_blocks=2, norm_groups=32, dropout=0.0, beta=0.25,
                          using_znorm=False, quant_resi=0.5, share_quant_resi=4,
                          patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16), seed=0))
  c.optim.update(dict(base_lr=1e-4, b1=0.5, b2=0.9, weight_decay=0.0, schedule='cos',
                      warmup_steps=5000, final_lr_frac=0.01, grad_clip=1.0))
  c.loss.update(dict(l1=1.0, l2=1.0, vq=1.0, perceptual=1.0))
  c.disc.update(dict(weight=0.2, start_step=20_000, adaptive=True, ch=64, n_layers=3,
                     norm_groups=32))
  c.codebook.update(dict(window=1000, restart_every=1000))
  c.mesh.update(dict(data=-1, fsdp=1, tensor=1))
  c.checkpoint.update(dict(every_steps=5000, keep=3, keep_every=50_000))
  c.log.every_steps = 100
  c.eval.update(dict(every_steps=10_000, batches=50, batch_size=256, grid_images=16))
  c.data.update(dict(name='imagenet2012', image_size=256, hflip=True, worker_count=8,
                     prefetch=4, train_split='train', eval_split='validation'))
  if arg == 'no_perceptual':
    c.loss.perceptual = 0.0
  elif arg:
    raise ValueError(f'experiments/tokenizer_imagenet.py: unknown argument {arg!r}; expected '
                     'nothing or "no_perceptual"')
  return c
