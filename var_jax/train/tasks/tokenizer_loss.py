"""The tokenizer task's losses and pure steps (see `var_jax.train.tasks.tokenizer` for the config).

Generator loss (one step, one global batch):
  loss.l1 * |x - x'| + loss.l2 * (x - x')^2 + loss.perceptual * LPIPS(x, x')   (reconstruction)
  + loss.vq * multi-scale VQ loss (commitment + codebook, straight-through; the quantizer's)
  + lambda * hinge_g(D(x'))                                                     (when disc.weight > 0)
with lambda = disc.weight * VQGAN's adaptive weight (gradient-norm ratio at the decoder's last conv) from step
`disc.start_step` on, 0 before. The PatchGAN discriminator trains with the hinge loss on real images and the
(stopped) reconstructions, from the same step on.

State layout: params {'vae', 'disc'?}; opt_state {'vae', 'disc'?, 'codebook'} where 'codebook' holds the
health window and EMA statistics (the codebook's non-gradient state), so a resumed run continues exactly;
frozen {'perceptual'?}.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from var_jax.models import discriminator as disc_lib
from var_jax.models import perceptual as perceptual_lib
from var_jax.models import resize
from var_jax.models import tokenizer as tokenizer_lib
from var_jax.train import codebook
from var_jax.train import image_metrics
from var_jax.train import state as state_lib

# Param paths inside the VQVAE tree.
CODEBOOK_PATH = ('quantize', 'embedding', 'embedding')
LAST_LAYER_PATH = ('decoder', 'conv_out', 'kernel')


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
  def from_config(cls, c: Any) -> LossSpec:
    return cls(l1=c.loss.l1, l2=c.loss.l2, vq=c.loss.vq, perceptual=c.loss.perceptual,
               disc_weight=c.disc.weight, disc_start=c.disc.start_step, adaptive=c.disc.adaptive,
               max_weight=c.disc.max_weight, window=c.codebook.window,
               restart_every=c.codebook.restart_every, ema_decay=c.codebook.ema_decay)


def get_path(tree: Any, path: tuple[str, ...]) -> Any:
  for key in path:
    tree = tree[key]
  return tree


def set_path(tree: Any, path: tuple[str, ...], value: Any) -> Any:
  if not path:
    return value
  return {**tree, path[0]: set_path(tree[path[0]], path[1:], value)}


def init_codebook_state(vae_params: Any, num_scales: int, spec: LossSpec) -> dict:
  codebook_VC = get_path(vae_params, CODEBOOK_PATH)
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


def train_step(state: state_lib.TrainState, batch: dict, rng: jax.Array, *,
               vae: tokenizer_lib.VQVAE, disc: disc_lib.PatchDiscriminator | None,
               tx_vae: optax.GradientTransformation, tx_disc: optax.GradientTransformation | None,
               lr_fn: optax.Schedule, spec: LossSpec) -> tuple[state_lib.TrainState, dict]:
  """One generator (and discriminator) update on the global batch; randomness from fold_in(rng, step).

  Gradients of the generator come from one backward pass: the cotangent at the reconstruction is
  dL_rec/dx' + lambda dL_gan/dx', with lambda computed from the same cotangents pulled back to the decoder's
  last conv only (cheap), so the adaptive weight costs no second full backward.
  """
  img = batch['image']
  step_rng = jax.random.fold_in(rng, state.step)
  k_dropout, k_restart = jax.random.split(step_rng)
  vae_params = state.params['vae']
  patch_nums = tuple(vae.patch_nums)

  def gen(p):
    recon, vq, aux = vae.apply({'params': p}, img, train=True, rngs={'dropout': k_dropout})
    return (recon, vq), aux

  (recon, vq), gen_vjp, aux = jax.vjp(gen, vae_params, has_aux=True)
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
      last_fn = lambda w: gen(set_path(vae_params, LAST_LAYER_PATH, w))[0][0]
      _, last_vjp = jax.vjp(last_fn, get_path(vae_params, LAST_LAYER_PATH))
      weight = weight * disc_lib.adaptive_weight(last_vjp(g_rec)[0], last_vjp(g_gan)[0], spec.max_weight)
    cotangent = g_rec + weight * g_gan
    loss = loss + weight * g_loss

    def d_loss_fn(dp):
      real = disc.apply({'params': dp}, img)
      fake = disc.apply({'params': dp}, jax.lax.stop_gradient(recon))
      return disc_lib.hinge_d_loss(real, fake), (jnp.mean(real), jnp.mean(fake))

    (d_loss, (logit_real, logit_fake)), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(disc_params)
    d_updates, d_opt = tx_disc.update(d_grads, state.opt_state['disc'], disc_params)
    params['disc'] = _gated(active, optax.apply_updates(disc_params, d_updates), disc_params)
    opt_state['disc'] = _gated(active, d_opt, state.opt_state['disc'])
    metrics.update(g_loss=g_loss, d_loss=d_loss, disc_weight=weight, logit_real=logit_real,
                   logit_fake=logit_fake)

  (grads,) = gen_vjp((cotangent, jnp.asarray(spec.vq, vq.dtype)))
  if spec.ema_decay is not None:  # the codebook follows EMA k-means, not its gradient
    grads = set_path(grads, CODEBOOK_PATH, jnp.zeros_like(get_path(grads, CODEBOOK_PATH)))
  updates, opt_state['vae'] = tx_vae.update(grads, state.opt_state['vae'], vae_params)
  new_vae = optax.apply_updates(vae_params, updates)

  # ---- codebook health, EMA, restarts
  idx_list, fhat_list = aux['idx'], aux['fhat']
  cb_state = dict(state.opt_state['codebook'])
  vocab_size = get_path(vae_params, CODEBOOK_PATH).shape[0]
  cb_state['health'] = codebook.update_health(
      cb_state['health'], codebook.hit_counts(idx_list, vocab_size), state.step, spec.window)
  codebook_VC = get_path(new_vae, CODEBOOK_PATH)
  if spec.ema_decay is not None or spec.restart_every:
    rest_list = quantizer_inputs(aux['f'], fhat_list, patch_nums)
  if spec.ema_decay is not None:
    cb_state['ema'], codebook_VC = codebook.ema_update(cb_state['ema'], codebook_VC, idx_list, rest_list,
                                                       spec.ema_decay)
  if spec.restart_every:
    due = ((state.step + 1) % spec.restart_every == 0) & (state.step + 1 >= spec.window)
    dead_V = codebook.dead_codes(cb_state['health'], state.step, spec.window) & due
    codebook_VC = codebook.restart_codes(codebook_VC, dead_V, rest_list, k_restart)
    if spec.ema_decay is not None:
      cb_state['ema'] = codebook.reset_ema(cb_state['ema'], dead_V, codebook_VC)
    metrics['codes_restarted'] = jnp.sum(dead_V)
  params['vae'] = set_path(new_vae, CODEBOOK_PATH, codebook_VC)
  opt_state['codebook'] = cb_state

  metrics.update(codebook.health_metrics(cb_state['health'], state.step, spec.window))
  metrics.update(loss=loss, grad_norm=optax.tree.norm(grads), lr=lr_fn(state.step),
                 psnr=jnp.mean(image_metrics.psnr(img, jnp.clip(recon, -1, 1))))
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def reconstructions(vae: tokenizer_lib.VQVAE, vae_params: Any, img_BHWC: jax.Array) -> jax.Array:
  """[K, B, H, W, 3] images decoded from the first k = 1..K scales of the token pyramid."""

  def fn(m, img):
    _, fhat_list = m.residual_quantize(m.encode(img))
    return jnp.stack([m.fhat_to_img(f_hat) for f_hat in fhat_list])

  return vae.apply({'params': vae_params}, img_BHWC, method=fn)


def eval_step(state: state_lib.TrainState, batch: dict, *, vae: tokenizer_lib.VQVAE, spec: LossSpec) -> dict:
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
  metrics['loss'], terms = reconstruction_loss(img, recon_KBHWC[-1], dataclasses.replace(spec, perceptual=0.0))
  metrics.update(terms)
  return metrics
