"""Training the multi-scale VQVAE tokenizer: losses, codebook health, evaluation, export.

A config with `task = 'tokenizer'` trains `var_jax.models.tokenizer.VQVAE` on images through the
same loop, mesh, checkpoints, logging and resume as VAR training; only the engine differs.

Generator loss (one step, one global batch):
  loss.l1 * |x - x'| + loss.l2 * (x - x')^2 + loss.perceptual * LPIPS(x, x')   (reconstruction)
  + loss.vq * multi-scale VQ loss (commitment + codebook, straight-through; the quantizer's)
  + lambda * hinge_g(D(x'))                                                     (when disc.weight > 0)
with lambda = disc.weight * VQGAN's adaptive weight (gradient-norm ratio at the decoder's last
conv) from step `disc.start_step` on, 0 before. The PatchGAN discriminator trains with the hinge
loss on real images and the (stopped) reconstructions, from the same step on.

Codebook health (`var_jax.train.codebook`) is logged every step per scale: usage over the last
`codebook.window` steps and perplexity. Optional: restarting codes unused for a whole window onto
current quantizer inputs every `codebook.restart_every` steps, and EMA k-means codebook updates
(`codebook.ema_decay`) instead of the codebook gradient. l2-normalised (cosine) code lookup is the
VQVAE attribute `tokenizer.using_znorm`. `tokenizer.path` starts from a saved tokenizer (fine-tuning);
its own config.json then sets the architecture.

State layout (what the loop checkpoints): params {'vae', 'disc'?}; opt_state {'vae', 'disc'?,
'codebook'} where 'codebook' holds the health window and EMA statistics, i.e. the codebook's
non-gradient optimizer state, so a resumed run continues exactly. Parameters are replicated; the
batch is split over mesh.data x mesh.fsdp.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any

from flax import struct
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_dict
import numpy as np
import optax

from var_jax import sharding
from var_jax.models import discriminator as disc_lib
from var_jax.models import perceptual as perceptual_lib
from var_jax.models import quantizer
from var_jax.models import resize
from var_jax.models import tokenizer as tokenizer_lib
from var_jax.train import codebook
from var_jax.train import config as config_lib
from var_jax.train import engine as engine_lib
from var_jax.train import image_metrics
from var_jax.train import state as state_lib

TASK = 'tokenizer'
# Param paths inside the VQVAE tree.
CODEBOOK_PATH = ('quantize', 'embedding', 'embedding')
LAST_LAYER_PATH = ('decoder', 'conv_out', 'kernel')


# ============================================================================== config


def base_config() -> ml_collections.ConfigDict:
  """Every tokenizer-training key with its default (VAR-only groups removed)."""
  c = config_lib.base_config()
  del c['model']
  del c['sharding']
  c.task = TASK
  c.optim.update(dict(base_lr=1e-4, weight_decay=0.0, schedule='cos', warmup_steps=0,
                      final_lr_frac=0.1, grad_clip=1.0))
  del c.optim['label_smoothing']
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
  c.eval.grid_images = 8          # columns of the reconstruction grid PNG
  return c


def _flat_keys(tree: Any, prefix: str = '') -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      out.update(_flat_keys(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def _check(ok: bool, message: str) -> None:
  if not ok:
    raise ValueError(f'config: {message}')


def resolve(config: Any, num_devices: int, process_count: int = 1) -> ml_collections.ConfigDict:
  """Validated copy of a tokenizer config with derived values; one-line ValueErrors on bad keys."""
  base = base_config()
  known = _flat_keys(base)
  unknown = [k for k in _flat_keys(ml_collections.ConfigDict(config)) if k not in known]
  if unknown:
    raise ValueError(f'config: unknown key {unknown[0]!r} for task={TASK!r}; see '
                     'var_jax/train/tokenizer_task.py base_config()')
  base.update(ml_collections.ConfigDict(config).to_dict())
  c = ml_collections.ConfigDict(base.to_dict())
  _check(c.steps > 0, f'steps must be positive, got {c.steps}')
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = sharding.resolve_mesh_shape(
      [c.mesh[a] for a in sharding.MESH_AXES], num_devices)
  _check(c.mesh.tensor == 1, f'mesh.tensor={c.mesh.tensor}: the tokenizer trains data-parallel '
         '(its params are replicated); put the devices on mesh.data or mesh.fsdp')
  dp = c.mesh.data * c.mesh.fsdp
  if c.eval.batch_size is None:
    c.eval.batch_size = c.batch_size
  for key, batch in (('batch_size', c.batch_size), ('eval.batch_size', c.eval.batch_size)):
    _check(batch > 0 and batch % dp == 0,
           f'{key}={batch} is not divisible by the data-parallel size {dp}')
    _check(batch % process_count == 0, f'{key}={batch} is not divisible by the {process_count} '
           'processes')

  vae = vae_kwargs(c.tokenizer)
  tokenizer_lib.VQVAE(**vae)  # attribute types only; shapes are checked at init
  size = quantizer.check_patch_nums(vae['patch_nums'])[-1] * 2 ** (len(vae['ch_mult']) - 1)
  if c.tokenizer.path is None:
    _check(c.data.image_size == size, f'data.image_size={c.data.image_size} but the tokenizer '
           f'(patch_nums[-1]={vae["patch_nums"][-1]}, {len(vae["ch_mult"])} ch_mult levels) '
           f'encodes {size}px images')

  loss = c.loss
  for key in ('l1', 'l2', 'vq', 'perceptual'):
    _check(loss[key] >= 0, f'loss.{key} must be >= 0, got {loss[key]}')
  _check(loss.l1 + loss.l2 + loss.perceptual > 0, 'loss.l1, loss.l2 and loss.perceptual are all '
         '0: nothing trains the decoder')
  _check(loss.perceptual == 0 or loss.perceptual_path is not None,
         f'loss.perceptual={loss.perceptual} needs loss.perceptual_path (an .npz of VGG16 weights)')
  d = c.disc
  _check(d.weight >= 0 and d.start_step >= 0, 'disc.weight and disc.start_step must be >= 0')
  if d.weight > 0:
    _check(d.ch % d.norm_groups == 0, f'disc.ch={d.ch} is not divisible by disc.norm_groups='
           f'{d.norm_groups}')
    _check(c.data.image_size // 2**d.n_layers >= 3, f'disc.n_layers={d.n_layers} is too deep for '
           f'{c.data.image_size}px images')
    _check(d.start_step < c.steps, f'disc.start_step={d.start_step} must be < steps={c.steps}')
  cb = c.codebook
  _check(cb.window > 0 and cb.restart_every >= 0,
         'codebook.window must be positive and codebook.restart_every >= 0')
  _check(cb.ema_decay is None or 0 < cb.ema_decay < 1,
         f'codebook.ema_decay must be in (0, 1) or None, got {cb.ema_decay}')

  o = c.optim
  _check(o.schedule in config_lib.SCHEDULES,
         f'optim.schedule={o.schedule!r}; expected one of {config_lib.SCHEDULES}')
  if o.lr is None:
    o.lr = o.base_lr * c.batch_size / 256
  if d.lr is None:
    d.lr = o.lr
  if o.warmup_steps is None:
    o.warmup_steps = round(c.steps / 50)
  if o.weight_decay_end is None:
    o.weight_decay_end = o.weight_decay
  _check(0 <= o.warmup_steps < c.steps,
         f'optim.warmup_steps={o.warmup_steps} must be in [0, steps={c.steps})')
  for group in ('checkpoint', 'log', 'eval'):
    _check(c[group].every_steps > 0, f'{group}.every_steps must be positive')
  _check(c.checkpoint.keep > 0, 'checkpoint.keep must be positive')
  return c


def vae_kwargs(tok_cfg: Any) -> dict:
  """VQVAE attributes of `config.tokenizer` (without `path` and `seed`)."""
  kwargs = {k: v for k, v in dict(tok_cfg).items() if k not in ('path', 'seed')}
  for key in ('ch_mult', 'patch_nums'):
    kwargs[key] = tuple(kwargs[key])
  return kwargs


@dataclasses.dataclass(frozen=True)
class LossSpec:
  """The static (trace-time) part of the config the steps need."""
  l1: float
  l2: float
  vq: float
  perceptual: float
  disc_weight: float
  disc_start: int
  adaptive: bool
  max_weight: float
  window: int
  restart_every: int
  ema_decay: float | None

  @classmethod
  def from_config(cls, c: Any) -> 'LossSpec':
    return cls(l1=c.loss.l1, l2=c.loss.l2, vq=c.loss.vq, perceptual=c.loss.perceptual,
               disc_weight=c.disc.weight, disc_start=c.disc.start_step, adaptive=c.disc.adaptive,
               max_weight=c.disc.max_weight, window=c.codebook.window,
               restart_every=c.codebook.restart_every, ema_decay=c.codebook.ema_decay)


# ============================================================================== state


@struct.dataclass
class TokenizerState:
  """step; params {'vae', 'disc'?}; opt_state {'vae', 'disc'?, 'codebook'}; frozen {'perceptual'?}.

  `frozen` (perceptual-network weights, read from the user's file) is never checkpointed.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  frozen: Any


def _get(tree: Any, path: tuple[str, ...]) -> Any:
  for key in path:
    tree = tree[key]
  return tree


def _set(tree: Any, path: tuple[str, ...], value: Any) -> Any:
  if not path:
    return value
  return {**tree, path[0]: _set(tree[path[0]], path[1:], value)}


def init_codebook_state(vae_params: Any, num_scales: int, spec: LossSpec) -> dict:
  codebook_VC = _get(vae_params, CODEBOOK_PATH)
  out = {'health': codebook.init_health(num_scales, codebook_VC.shape[0])}
  if spec.ema_decay is not None:
    out['ema'] = codebook.init_ema(codebook_VC)
  return out


def initial_codebook(key: jax.Array, codebook_VC: jax.Array, eini: float) -> jax.Array:
  """Official `VectorQuantizer2.eini`: small codes let the encoder, not the init, set the scale."""
  if eini > 0:
    return eini * jax.random.truncated_normal(key, -2.0, 2.0, codebook_VC.shape, codebook_VC.dtype)
  if eini < 0:
    bound = abs(eini) / codebook_VC.shape[0]
    return jax.random.uniform(key, codebook_VC.shape, codebook_VC.dtype, -bound, bound)
  return codebook_VC


# ============================================================================== steps


def forward(vae: tokenizer_lib.VQVAE, vae_params: Any, img_BHWC: jax.Array, *, train: bool,
            rng: jax.Array | None = None):
  """(recon unclamped, vq_loss, idx list, f_BhwC, f_hat list): the VQVAE's training forward,
  also returning the latent and the per-scale f_hat that codebook restarts and EMA need."""

  def fn(m, img):
    f_BhwC = m.encode(img, train)
    idx_list, fhat_list = m.residual_quantize(f_BhwC)
    vq = quantizer.vq_loss(f_BhwC, fhat_list, m.beta)
    f_st = quantizer.straight_through(f_BhwC, fhat_list[-1])
    return m.decoder(m.post_quant_conv(f_st), train), vq, idx_list, f_BhwC, fhat_list

  rngs = {'dropout': rng} if rng is not None else {}
  return vae.apply({'params': vae_params}, img_BHWC, method=fn, rngs=rngs)


def quantizer_inputs(f_BhwC: jax.Array, fhat_list: list[jax.Array],
                     patch_nums: tuple[int, ...]) -> list[jax.Array]:
  """What the quantizer looked up at each scale: area(f - f_hat_{k-1}) as [B * pn², C]."""
  f_BhwC = jax.lax.stop_gradient(f_BhwC)
  prev = jnp.zeros_like(f_BhwC)
  out = []
  for pn, f_hat in zip(patch_nums, fhat_list):
    rest = resize.area_resize(f_BhwC - prev, (pn, pn))
    out.append(rest.reshape(-1, rest.shape[-1]))
    prev = jax.lax.stop_gradient(f_hat)
  return out


def reconstruction_loss(img_BHWC: jax.Array, recon_BHWC: jax.Array, spec: LossSpec,
                        perceptual_params: Any = None) -> tuple[jax.Array, dict]:
  diff = recon_BHWC - img_BHWC
  terms = {'l1': jnp.mean(jnp.abs(diff)), 'l2': jnp.mean(jnp.square(diff))}
  loss = spec.l1 * terms['l1'] + spec.l2 * terms['l2']
  if spec.perceptual > 0:
    terms['perceptual'] = jnp.mean(perceptual_lib.lpips(perceptual_params, img_BHWC, recon_BHWC))
    loss = loss + spec.perceptual * terms['perceptual']
  return loss, terms


def _gated(active: jax.Array, new: Any, old: Any) -> Any:
  return jax.tree.map(lambda n, o: jnp.where(active, n, o), new, old)


def train_step(state: TokenizerState, batch: dict, rng: jax.Array, *,
               vae: tokenizer_lib.VQVAE, disc: disc_lib.PatchDiscriminator | None,
               tx_vae: optax.GradientTransformation, tx_disc: optax.GradientTransformation | None,
               lr_fn: optax.Schedule, spec: LossSpec) -> tuple[TokenizerState, dict]:
  """One generator (and discriminator) update on the global batch; randomness from fold_in(rng, step).

  Gradients of the generator come from one backward pass: the cotangent at the reconstruction is
  dL_rec/dx' + lambda dL_gan/dx', with lambda computed from the same cotangents pulled back to the
  decoder's last conv only (cheap), so the adaptive weight costs no second full backward.
  """
  img = batch['image']
  step_rng = jax.random.fold_in(rng, state.step)
  k_dropout, k_restart = jax.random.split(step_rng)
  vae_params = state.params['vae']
  patch_nums = tuple(vae.patch_nums)

  def gen(p):
    recon, vq, idx_list, f_BhwC, fhat_list = forward(vae, p, img, train=True, rng=k_dropout)
    return (recon, vq), (idx_list, f_BhwC, fhat_list)

  (recon, vq), gen_vjp, (idx_list, f_BhwC, fhat_list) = jax.vjp(gen, vae_params, has_aux=True)
  (rec, terms), g_rec = jax.value_and_grad(reconstruction_loss, argnums=1, has_aux=True)(
      img, recon, spec, state.frozen.get('perceptual'))
  cotangent = g_rec
  metrics = dict(terms, rec_loss=rec, vq_loss=vq)
  loss = rec + spec.vq * vq

  params, opt_state = dict(state.params), dict(state.opt_state)
  if disc is not None:
    active = state.step >= spec.disc_start
    disc_params = state.params['disc']
    g_loss, g_gan = jax.value_and_grad(
        lambda x: disc_lib.hinge_g_loss(disc.apply({'params': disc_params}, x)))(recon)
    weight = spec.disc_weight * active.astype(jnp.float32)
    if spec.adaptive:
      last_fn = lambda w: gen(_set(vae_params, LAST_LAYER_PATH, w))[0][0]
      _, last_vjp = jax.vjp(last_fn, _get(vae_params, LAST_LAYER_PATH))
      weight = weight * disc_lib.adaptive_weight(last_vjp(g_rec)[0], last_vjp(g_gan)[0],
                                                 spec.max_weight)
    cotangent = g_rec + weight * g_gan
    loss = loss + weight * g_loss

    def d_loss_fn(dp):
      real = disc.apply({'params': dp}, img)
      fake = disc.apply({'params': dp}, jax.lax.stop_gradient(recon))
      return disc_lib.hinge_d_loss(real, fake), (jnp.mean(real), jnp.mean(fake))

    (d_loss, (logit_real, logit_fake)), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(
        disc_params)
    d_updates, d_opt = tx_disc.update(d_grads, state.opt_state['disc'], disc_params)
    params['disc'] = _gated(active, optax.apply_updates(disc_params, d_updates), disc_params)
    opt_state['disc'] = _gated(active, d_opt, state.opt_state['disc'])
    metrics.update(g_loss=g_loss, d_loss=d_loss, disc_weight=weight, logit_real=logit_real,
                   logit_fake=logit_fake)

  (grads,) = gen_vjp((cotangent, jnp.asarray(spec.vq, vq.dtype)))
  if spec.ema_decay is not None:  # the codebook follows EMA k-means, not its gradient
    grads = _set(grads, CODEBOOK_PATH, jnp.zeros_like(_get(grads, CODEBOOK_PATH)))
  updates, opt_state['vae'] = tx_vae.update(grads, state.opt_state['vae'], vae_params)
  new_vae = optax.apply_updates(vae_params, updates)

  # ---- codebook health, EMA, restarts
  cb_state = dict(state.opt_state['codebook'])
  vocab_size = _get(vae_params, CODEBOOK_PATH).shape[0]
  cb_state['health'] = codebook.update_health(
      cb_state['health'], codebook.hit_counts(idx_list, vocab_size), state.step, spec.window)
  codebook_VC = _get(new_vae, CODEBOOK_PATH)
  if spec.ema_decay is not None or spec.restart_every:
    rest_list = quantizer_inputs(f_BhwC, fhat_list, patch_nums)
  if spec.ema_decay is not None:
    cb_state['ema'], codebook_VC = codebook.ema_update(cb_state['ema'], codebook_VC, idx_list,
                                                       rest_list, spec.ema_decay)
  if spec.restart_every:
    due = ((state.step + 1) % spec.restart_every == 0) & (state.step + 1 >= spec.window)
    dead_V = codebook.dead_codes(cb_state['health'], state.step, spec.window) & due
    codebook_VC = codebook.restart_codes(codebook_VC, dead_V, rest_list, k_restart)
    if spec.ema_decay is not None:
      cb_state['ema'] = codebook.reset_ema(cb_state['ema'], dead_V, codebook_VC)
    metrics['codes_restarted'] = jnp.sum(dead_V)
  params['vae'] = _set(new_vae, CODEBOOK_PATH, codebook_VC)
  opt_state['codebook'] = cb_state

  metrics.update(codebook.health_metrics(cb_state['health'], state.step, spec.window))
  metrics.update(loss=loss, grad_norm=optax.tree.norm(grads), lr=lr_fn(state.step),
                 psnr=jnp.mean(image_metrics.psnr(img, jnp.clip(recon, -1, 1))))
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  return new_state, metrics


def reconstructions(vae: tokenizer_lib.VQVAE, vae_params: Any, img_BHWC: jax.Array) -> jax.Array:
  """[K, B, H, W, 3] images decoded from the first k = 1..K scales of the token pyramid."""

  def fn(m, img):
    _, fhat_list = m.residual_quantize(m.encode(img))
    return jnp.stack([m.fhat_to_img(f_hat) for f_hat in fhat_list])

  return vae.apply({'params': vae_params}, img_BHWC, method=fn)


def eval_step(state: TokenizerState, batch: dict, *, vae: tokenizer_lib.VQVAE,
              spec: LossSpec) -> dict:
  """PSNR/SSIM of the full pyramid (psnr, ssim) and of the first k scales (psnr_scales_k, ...)."""
  img = batch['image']
  recon_KBHWC = reconstructions(vae, state.params['vae'], img)
  num_scales = recon_KBHWC.shape[0]
  metrics = {}
  for k in range(num_scales):
    metrics[f'psnr_scales_{k + 1}'] = jnp.mean(image_metrics.psnr(img, recon_KBHWC[k]))
    metrics[f'ssim_scales_{k + 1}'] = jnp.mean(image_metrics.ssim(img, recon_KBHWC[k]))
  metrics['psnr'] = metrics[f'psnr_scales_{num_scales}']
  metrics['ssim'] = metrics[f'ssim_scales_{num_scales}']
  metrics['loss'], terms = reconstruction_loss(img, recon_KBHWC[-1], dataclasses.replace(
      spec, perceptual=0.0))
  metrics.update(terms)
  return metrics


# ============================================================================== engine


class TokenizerEngine(engine_lib.RunRng):
  """Compiled, sharded tokenizer-training functions: the interface `loop.train` drives."""

  def __init__(self, config: Any, devices=None):
    self.config = config
    self.mesh = sharding.make_mesh(config.mesh, devices)
    self.replicated = sharding.replicated(self.mesh)
    self.batch_sharding = sharding.batch_sharding(self.mesh)
    self.spec = LossSpec.from_config(config)
    self._start_params = None
    if config.tokenizer.path:
      from var_jax import convert  # pylint: disable=g-import-not-at-top
      self.vae, self._start_params = convert.load_tokenizer(config.tokenizer.path)
    else:
      self.vae = tokenizer_lib.VQVAE(**vae_kwargs(config.tokenizer))
    self.model_kwargs = {f.name: getattr(self.vae, f.name)
                         for f in dataclasses.fields(tokenizer_lib.VQVAE)
                         if f.name not in ('parent', 'name')}
    self.patch_nums = tuple(self.vae.patch_nums)
    self.disc = None
    if self.spec.disc_weight > 0:
      d = config.disc
      self.disc = disc_lib.PatchDiscriminator(ch=d.ch, n_layers=d.n_layers,
                                              norm_groups=d.norm_groups)
    self.tx_vae = state_lib.make_optimizer(config.optim, config.steps)
    self.lr_fn = state_lib.lr_schedule(config.optim, config.steps)
    self.tx_disc = None
    if self.disc is not None:
      disc_optim = ml_collections.ConfigDict(config.optim.to_dict())
      disc_optim.lr = config.disc.lr
      self.tx_disc = state_lib.make_optimizer(disc_optim, config.steps - config.disc.start_step)
    frozen = {}
    if self.spec.perceptual > 0:
      frozen['perceptual'] = perceptual_lib.load_params(config.loss.perceptual_path)
    self._frozen_host = frozen
    self.set_rng(jax.random.key_data(jax.random.key(config.seed)))
    abstract = jax.eval_shape(self._init, jax.random.key(0), self._start_params_abstract())
    self.state_shardings = jax.tree.map(lambda _: self.replicated, abstract)
    self.abstract = abstract
    self._compiled = {}

  # ---- construction -------------------------------------------------------------------------

  def _image(self) -> jax.Array:
    size = self.vae.image_size
    return jnp.zeros((1, size, size, 3), jnp.float32)

  def _start_params_abstract(self):
    if self._start_params is None:
      return None
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), self._start_params)

  def _init(self, key, start_params, frozen=None):
    k_vae, k_disc = jax.random.split(key)
    if start_params is None:
      vae_params = self.vae.init(k_vae, self._image())['params']
      vae_params = _set(vae_params, CODEBOOK_PATH, initial_codebook(
          jax.random.fold_in(k_vae, 1), _get(vae_params, CODEBOOK_PATH), self.config.codebook.eini))
    else:
      vae_params = start_params
    params = {'vae': vae_params}
    opt_state = {'vae': self.tx_vae.init(vae_params),
                 'codebook': init_codebook_state(vae_params, len(self.patch_nums), self.spec)}
    if self.disc is not None:
      params['disc'] = self.disc.init(k_disc, self._image())['params']
      opt_state['disc'] = self.tx_disc.init(params['disc'])
    frozen = jax.tree.map(jnp.asarray, self._frozen_host) if frozen is None else frozen
    return TokenizerState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
                          frozen=frozen)

  def init_state(self) -> TokenizerState:
    """Fresh (or `tokenizer.path`) params and optimizer state, created replicated on the mesh."""
    start = (None if self._start_params is None
             else sharding.put_replicated(self._start_params, self.mesh))
    frozen = sharding.put_replicated(self._frozen_host, self.mesh)
    init = jax.jit(self._init, out_shardings=self.state_shardings)
    with jax.set_mesh(self.mesh):
      return init(jax.random.key(self.config.seed), start, frozen)

  # ---- compiled steps -----------------------------------------------------------------------

  def _train_fn(self, state, batch, rng_data):
    return train_step(state, batch, jax.random.wrap_key_data(rng_data), vae=self.vae,
                      disc=self.disc, tx_vae=self.tx_vae, tx_disc=self.tx_disc,
                      lr_fn=self.lr_fn, spec=self.spec)

  def _compile(self, name, lower):
    if name not in self._compiled:
      self._compiled[name] = lower().compile()
    return self._compiled[name]

  def lower_train_step(self, state, batch):
    jitted = jax.jit(self._train_fn,
                     in_shardings=(self.state_shardings, self.batch_sharding, self.replicated),
                     out_shardings=(self.state_shardings, self.replicated), donate_argnums=0)
    with jax.set_mesh(self.mesh):
      return jitted.lower(state, batch, self.rng_data)

  def train_step(self, state, batch):
    """(new state, metrics) for a global batch; compiles on the first call. `state` is donated."""
    compiled = self._compile('train', functools.partial(self.lower_train_step, state, batch))
    return compiled(state, batch, self.rng_data)

  def eval_step(self, state, batch):
    def lower():
      jitted = jax.jit(functools.partial(eval_step, vae=self.vae, spec=self.spec),
                       in_shardings=(self.state_shardings, self.batch_sharding),
                       out_shardings=self.replicated)
      with jax.set_mesh(self.mesh):
        return jitted.lower(state, batch)
    return self._compile('eval', lower)(state, batch)

  # ---- data ---------------------------------------------------------------------------------

  def global_batch(self, local: dict) -> dict:
    """This process's images -> a global array split over data x fsdp (labels are not used)."""
    return {'image': jax.make_array_from_process_local_data(
        self.batch_sharding, np.asarray(local['image'], np.float32))}

  def batches(self, split: str):
    from var_jax import data  # pylint: disable=g-import-not-at-top
    c, train = self.config, split == 'train'
    return data.make_loader(
        c.data, split=c.data.train_split if train else c.data.eval_split,
        global_batch_size=c.batch_size if train else c.eval.batch_size, seed=c.seed, train=train,
        process_index=jax.process_index(), process_count=jax.process_count())

  # ---- accounting ---------------------------------------------------------------------------

  @property
  def num_params(self) -> int:
    """Trainable parameters (tokenizer and, when on, discriminator)."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(self.abstract.params))

  @property
  def tokens_per_step(self) -> int:
    """Token-map positions quantized per step (sum of pn² per image)."""
    return self.config.batch_size * sum(p * p for p in self.patch_nums)

  @functools.cached_property
  def flops_per_step(self) -> float:
    """XLA's count for the whole (unpartitioned) train step on the global batch."""
    size = self.vae.image_size
    batch = {'image': jax.ShapeDtypeStruct((self.config.batch_size, size, size, 3), jnp.float32)}
    rng = jax.ShapeDtypeStruct(self.rng_data.shape, self.rng_data.dtype)
    cost = jax.jit(self._train_fn).lower(self.abstract, batch, rng).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get('flops', 0.0)) if cost else 0.0

  # ---- outputs ------------------------------------------------------------------------------

  def host_vae_params(self, state) -> Any:
    return jax.tree.map(np.asarray, jax.device_get(state.params['vae']))

  def export(self, state, path: str) -> str:
    """Writes the tokenizer (config.json + vae_state.npz, official keys) that `load_tokenizer` reads.

    The per-scale code-hit averages go into the official `quantize.ema_vocab_hit_SV` buffer.
    """
    from var_jax import convert  # pylint: disable=g-import-not-at-top
    hits = np.asarray(jax.device_get(state.opt_state['codebook']['health']['hits_SV']))
    if jax.process_index() == 0:
      convert.save_tokenizer(path, self.vae, self.host_vae_params(state),
                             buffers={'quantize.ema_vocab_hit_SV': hits})
    return path

  def finish(self, state, workdir: str) -> dict:
    """End of training: `workdir/tokenizer` (export) and `workdir/recon_grid.png` (eval images)."""
    out = {'tokenizer': self.export(state, os.path.join(workdir, 'tokenizer'))}
    if jax.process_index() == 0:
      batches = self.batches('eval')
      images = np.asarray(next(batches)['image'][:self.config.eval.grid_images], np.float32)
      # Host params on this process's default device: no collective with the other processes.
      recon = jax.jit(functools.partial(reconstructions, self.vae))(self.host_vae_params(state),
                                                                    images)
      out['recon_grid'] = os.path.join(workdir, 'recon_grid.png')
      save_grid(out['recon_grid'], images, np.asarray(recon))
    return out


def save_grid(path: str, images: np.ndarray, recon_KBHWC: np.ndarray) -> None:
  """PNG: first row the inputs, row k+1 the reconstruction from the first k+1 scales."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rows = np.concatenate([images[None], recon_KBHWC], axis=0)  # [K+1, B, H, W, 3]
  k, b, h, w, _ = rows.shape
  grid = rows.transpose(0, 2, 1, 3, 4).reshape(k * h, b * w, 3)
  grid = np.clip(np.round((grid + 1.0) * 127.5), 0, 255).astype(np.uint8)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(grid).save(path)
