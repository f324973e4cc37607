"""`task = 'tokenizer'`: training the multi-scale VQVAE on images (losses in `tokenizer_loss`).

Codebook health (`var_jax.train.codebook`) is logged every step per scale: usage over the last
`codebook.window` steps and perplexity. Optional: restarting codes unused for a whole window onto current
quantizer inputs every `codebook.restart_every` steps, and EMA k-means codebook updates (`codebook.ema_decay`)
instead of the codebook gradient. l2-normalised (cosine) code lookup is the VQVAE attribute
`tokenizer.using_znorm`. `tokenizer.path` starts from a saved tokenizer (fine-tuning); its own config.json then
sets the architecture. Parameters are replicated; the batch is split over mesh.data x mesh.fsdp. The run ends
with `WORKDIR/tokenizer` (config.json + vae_state.npz, official key names) and `WORKDIR/recon_grid.png`.
"""
from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_dict
import numpy as np
from jax.sharding import PartitionSpec

from var_jax import errors
from var_jax import flops
from var_jax.data import config as data_config
from var_jax.models import discriminator as disc_lib
from var_jax.models import perceptual as perceptual_lib
from var_jax.models import tokenizer as tokenizer_lib
from var_jax.train import state as state_lib
from var_jax.train import task as task_lib
from var_jax.train.tasks import tokenizer_loss as loss_lib
from var_jax.weights import vqvae


def _vae(tok_cfg: Any) -> tokenizer_lib.VQVAE:
  return tokenizer_lib.VQVAE(**vqvae.attributes({k: v for k, v in tok_cfg.items() if k not in vqvae.SOURCE_KEYS},
                                                what='config: tokenizer'))


class TokenizerTask(task_lib.Task):
  """The multi-scale VQVAE (and an optional PatchGAN discriminator), trained data-parallel."""

  name = 'tokenizer'
  console_keys = ('loss', 'rec_loss', 'vq_loss', 'psnr', 'ssim', 'usage', 'lr', 'grad_norm')
  summary_keys = ('loss', 'psnr', 'ssim')

  @classmethod
  def default_config(cls) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.tokenizer = vqvae.config_group()
    c.optim = ml_collections.ConfigDict(dict(base_lr=1e-4, weight_decay=0.0, schedule='cos', warmup_steps=0,
                                             final_lr_frac=0.1, grad_clip=1.0))
    c.loss = ml_collections.ConfigDict(dict(
        l1=1.0, l2=0.0, vq=1.0,
        perceptual=0.0,                              # > 0 needs perceptual_path
        perceptual_path=config_dict.placeholder(str)))  # .npz, see var_jax.models.perceptual
    c.disc = ml_collections.ConfigDict(dict(
        weight=0.0,                 # 0: no discriminator at all
        start_step=0,               # generator and discriminator GAN terms start here
        adaptive=True,              # VQGAN's gradient-norm balance at the decoder's last layer
        max_weight=1e4,
        ch=64, n_layers=3, norm_groups=32,
        lr=config_dict.placeholder(float)))  # None: optim.lr
    c.codebook = ml_collections.ConfigDict(dict(
        window=100,                 # steps over which usage is counted (and a code may stay unused)
        restart_every=0,            # > 0: restart dead codes every this many steps
        ema_decay=config_dict.placeholder(float),  # e.g. 0.99: EMA k-means instead of gradients
        eini=0.0))  # initial codes (official `eini`): >0 trunc-normal std, <0 U(+-|eini|/V), 0 VQVAE's
    c.eval = ml_collections.ConfigDict(dict(grid_images=8))  # columns of the reconstruction grid PNG
    return c

  @classmethod
  def resolve(cls, c: ml_collections.ConfigDict) -> None:
    errors.check_config(c.mesh.tensor == 1,
        f'mesh.tensor={c.mesh.tensor}: the tokenizer trains data-parallel (its params '
           'are replicated); put the devices on mesh.data or mesh.fsdp')
    errors.check_config(c.data.name not in data_config.TOKEN_SOURCES,
        f'data.name={c.data.name!r}: the tokenizer trains '
           'on images')
    vae = _vae(c.tokenizer)
    if c.tokenizer.path is None:
      errors.check_config(c.data.image_size == vae.image_size, f'data.image_size={c.data.image_size} but the tokenizer '
             f'(patch_nums[-1]={vae.patch_nums[-1]}, {len(vae.ch_mult)} ch_mult levels) encodes '
             f'{vae.image_size}px images')
    loss = c.loss
    for key in ('l1', 'l2', 'vq', 'perceptual'):
      errors.check_config(loss[key] >= 0, f'loss.{key} must be >= 0, got {loss[key]}')
    errors.check_config(loss.l1 + loss.l2 + loss.perceptual > 0,
        'loss.l1, loss.l2 and loss.perceptual are all 0: nothing '
           'trains the decoder')
    errors.check_config(loss.perceptual == 0 or loss.perceptual_path is not None,
           f'loss.perceptual={loss.perceptual} needs loss.perceptual_path (an .npz of VGG16 weights)')
    d = c.disc
    errors.check_config(d.weight >= 0 and d.start_step >= 0, 'disc.weight and disc.start_step must be >= 0')
    if d.weight > 0:
      errors.check_config(d.ch % d.norm_groups == 0,
          f'disc.ch={d.ch} is not divisible by disc.norm_groups={d.norm_groups}')
      errors.check_config(c.data.image_size // 2**d.n_layers >= 3, f'disc.n_layers={d.n_layers} is too deep for '
             f'{c.data.image_size}px images')
      errors.check_config(d.start_step < c.steps, f'disc.start_step={d.start_step} must be < steps={c.steps}')
    cb = c.codebook
    errors.check_config(cb.window > 0 and cb.restart_every >= 0,
           'codebook.window must be positive and codebook.restart_every >= 0')
    errors.check_config(cb.ema_decay is None or 0 < cb.ema_decay < 1,
           f'codebook.ema_decay must be in (0, 1) or None, got {cb.ema_decay}')
    if d.lr is None:
      d.lr = c.optim.lr

  @classmethod
  def sizes(cls, c: ml_collections.ConfigDict) -> task_lib.Sizes:
    """Sizes of the VQVAE (and discriminator) of a resolved config, counted from their shapes."""
    vae = tokenizer_lib.VQVAE(**vqvae.read_attributes(c.tokenizer.path)) if c.tokenizer.path else _vae(c.tokenizer)
    size = vae.image_size
    img = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    vae_params = vqvae.param_shapes(vae)
    forward = flops.matmul_flops(lambda p, x: vae.apply({'params': p}, x), vae_params, img)
    params = flops.count_params(vae_params)
    if c.disc.weight > 0:
      disc = _disc(c)
      disc_params = jax.eval_shape(disc.init, jax.random.key(0), img)['params']
      params += flops.count_params(disc_params)
      # The discriminator sees the real and the reconstructed image.
      forward += 2 * flops.matmul_flops(lambda p, x: disc.apply({'params': p}, x), disc_params, img)
    return task_lib.Sizes(params=params, params_nonembed=params,
                          tokens_per_example=sum(p * p for p in vae.patch_nums),
                          flops_per_example=3.0 * forward)

  @classmethod
  def columns(cls, c: ml_collections.ConfigDict) -> dict[str, Any]:
    return dict(vocab_size=c.tokenizer.vocab_size, ch=c.tokenizer.ch)

  @classmethod
  def run_prefix(cls, c: ml_collections.ConfigDict) -> str:
    return f'tok-v{c.tokenizer.vocab_size}'

  def __init__(self, config: ml_collections.ConfigDict):
    self.spec = loss_lib.LossSpec.from_config(config)
    self._start = None
    if config.tokenizer.path:
      self.vae, self._start = vqvae.load(config.tokenizer.path)
    else:
      self.vae = _vae(config.tokenizer)
    self.patch_nums = tuple(self.vae.patch_nums)
    self.disc = _disc(config) if self.spec.disc_weight > 0 else None
    self.lr_fn = state_lib.lr_schedule(config.optim, config.optim.total_steps)
    self._frozen = {}
    if self.spec.perceptual > 0:
      self._frozen['perceptual'] = perceptual_lib.load_params(config.loss.perceptual_path)
    super().__init__(config)

  # ---- state ---------------------------------------------------------------------------------------

  def _image(self) -> jax.Array:
    return jnp.zeros((1, self.vae.image_size, self.vae.image_size, 3), jnp.float32)

  def init_params(self, key: jax.Array, start: Any = None) -> Any:
    k_vae, k_disc = jax.random.split(key)
    if start is None:
      vae_params = self.vae.init(k_vae, self._image())['params']
      codes = loss_lib.get_path(vae_params, loss_lib.CODEBOOK_PATH)
      vae_params = loss_lib.set_path(vae_params, loss_lib.CODEBOOK_PATH, loss_lib.initial_codebook(
          jax.random.fold_in(k_vae, 1), codes, self.config.codebook.eini))
    else:
      vae_params = start
    params = {'vae': vae_params}
    if self.disc is not None:
      params['disc'] = self.disc.init(k_disc, self._image())['params']
    return params

  def start_params(self) -> task_lib.Start | None:
    return None if self._start is None else task_lib.Start(self._start)

  def make_optimizer(self) -> Any:
    c = self.config
    self.tx_vae = state_lib.make_optimizer(c.optim, c.optim.total_steps)
    self.tx_disc = None
    if self.disc is not None:
      disc_optim = ml_collections.ConfigDict(c.optim.to_dict())
      disc_optim.lr = c.disc.lr
      self.tx_disc = state_lib.make_optimizer(disc_optim, c.optim.total_steps - c.disc.start_step)
    return self.tx_vae

  def init_opt_state(self, params: Any) -> Any:
    opt_state = {'vae': self.tx_vae.init(params['vae']),
                 'codebook': loss_lib.init_codebook_state(params['vae'], len(self.patch_nums), self.spec)}
    if self.disc is not None:
      opt_state['disc'] = self.tx_disc.init(params['disc'])
    return opt_state

  def state_logical_specs(self, frozen: Any) -> state_lib.TrainState:
    """Everything replicated: the tokenizer trains data-parallel."""
    abstract = jax.eval_shape(self.init_state, jax.random.key(0), frozen)
    return jax.tree.map(lambda _: PartitionSpec(), abstract)

  def frozen(self) -> Any:
    return self._frozen

  # ---- steps ---------------------------------------------------------------------------------------

  def train_step(self, state, batch, rng):
    return loss_lib.train_step(state, batch, rng, vae=self.vae, disc=self.disc, tx_vae=self.tx_vae,
                               tx_disc=self.tx_disc, lr_fn=self.lr_fn, spec=self.spec)

  def eval_step(self, state, batch):
    return loss_lib.eval_step(state, batch, vae=self.vae, spec=self.spec)

  # ---- outputs -------------------------------------------------------------------------------------

  def describe(self) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in vqvae.module_attributes(self.vae).items()}

  def host_vae_params(self, state) -> Any:
    return jax.tree.map(np.asarray, jax.device_get(state.params['vae']))

  def export(self, state, path: str) -> str:
    """Writes the tokenizer (config.json + vae_state.npz, official keys) that `vqvae.load` reads.

    The per-scale code-hit averages go into the official `quantize.ema_vocab_hit_SV` buffer.
    """
    hits = np.asarray(jax.device_get(state.opt_state['codebook']['health']['hits_SV']))
    if jax.process_index() == 0:
      vqvae.save(path, self.vae, self.host_vae_params(state), buffers={'quantize.ema_vocab_hit_SV': hits})
    return path

  def finish(self, state, workdir: str) -> dict:
    """`workdir/tokenizer` (the export) and `workdir/recon_grid.png` (eval images and reconstructions)."""
    out = {'tokenizer': self.export(state, os.path.join(workdir, 'tokenizer'))}
    if jax.process_index() == 0:
      batches = self.batches('eval', process_index=0, process_count=1)
      images = np.asarray(next(batches)['image'][:self.config.eval.grid_images], np.float32)
      # Host params on this process's default device: no collective with the other processes.
      recon = jax.jit(functools.partial(loss_lib.reconstructions, self.vae))(self.host_vae_params(state), images)
      out['recon_grid'] = os.path.join(workdir, 'recon_grid.png')
      save_grid(out['recon_grid'], images, np.asarray(recon))
    return out


def _disc(c: Any) -> disc_lib.PatchDiscriminator:
  d = c.disc
  return disc_lib.PatchDiscriminator(ch=d.ch, n_layers=d.n_layers, norm_groups=d.norm_groups)


def save_grid(path: str, images: np.ndarray, recon_KBHWC: np.ndarray) -> None:
  """PNG: first row the inputs, row k+1 the reconstruction from the first k+1 scales."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rows = np.concatenate([images[None], recon_KBHWC], axis=0)  # [K+1, B, H, W, 3]
  k, b, h, w, _ = rows.shape
  grid = rows.transpose(0, 2, 1, 3, 4).reshape(k * h, b * w, 3)
  grid = np.clip(np.round((grid + 1.0) * 127.5), 0, 255).astype(np.uint8)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(grid).save(path)


TASK = TokenizerTask
