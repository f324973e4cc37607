"""`task = 'var'`: the VAR transformer trained by next-scale prediction on a frozen tokenizer's tokens.

A batch is either images `{'image': f32[B,H,W,3], 'label': i32[B]}`, tokenized in the step by the frozen
tokenizer, or pre-tokenized `{'tokens': i32[B,L], 'label': i32[B]}` (scales concatenated). Either way the
teacher-forcing input comes from the tokenizer's codebook and phi convolutions, so the tokenizer's params are
the state's `frozen` part. Sizes and FLOPs are `var_jax.flops`'s closed forms.
"""
from __future__ import annotations

from typing import Any

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from ml_collections import config_dict

from var_jax import errors
from var_jax import flops
from var_jax.data import config as data_config
from var_jax.data import synthetic_tokens
from var_jax.models import loss as loss_lib
from var_jax.models import tokenizer as tokenizer_lib
from var_jax.models import var as var_lib
from var_jax.train import finetune
from var_jax.train import state as state_lib
from var_jax.train import task as task_lib
from var_jax.weights import state_dict as sd
from var_jax.weights import vqvae


def tokenizer_group() -> ml_collections.ConfigDict:
  """`tokenizer.*`: VQVAE attributes plus where its weights come from (path None: random init from seed)."""
  return ml_collections.ConfigDict(dict(
      vocab_size=4096, z_channels=32, ch=160, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, norm_groups=32,
      dropout=0.0, beta=0.25, using_znorm=False, quant_resi=0.5, share_quant_resi=4,
      patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16), path=config_dict.placeholder(str), seed=0))


def split_scales(idx_BL: jax.Array, patch_nums) -> list[jax.Array]:
  """[B, sum pn²] -> one [B, pn²] per scale."""
  bounds = np.cumsum([p * p for p in patch_nums[:-1]]).tolist()
  return jnp.split(idx_BL, bounds, axis=1)


def teacher_forcing(tokenizer: nn.Module, tok_params: Any, batch: dict, patch_nums):
  """(idx_BL target tokens, x_BLC teacher-forcing input) from images or tokens."""
  variables = {'params': tok_params}
  if 'tokens' in batch:
    idx_list = split_scales(batch['tokens'], patch_nums)
  else:
    idx_list = tokenizer.apply(variables, batch['image'], method='img_to_idx')
  x_BLC = tokenizer.apply(variables, idx_list, method='idx_to_var_input')
  idx_BL = jnp.concatenate(idx_list, axis=1)
  return jax.lax.stop_gradient(idx_BL), jax.lax.stop_gradient(x_BLC)


def train_step(state: state_lib.TrainState, batch: dict, rng: jax.Array, *, model: var_lib.VAR,
               tokenizer: nn.Module, tx: optax.GradientTransformation, lr_fn: optax.Schedule,
               label_smoothing: float = 0.0):
  """One optimizer step on the global batch; returns (new state, the loss terms of `var_loss` + grad_norm, lr)."""
  patch_nums = model.patch_nums
  idx_BL, x_BLC = teacher_forcing(tokenizer, state.frozen, batch, patch_nums)
  step_rng = jax.random.fold_in(rng, state.step)

  def loss_fn(params):
    logits_BLV = model.apply({'params': params}, batch['label'], x_BLC, train=True, rngs={'dropout': step_rng})
    return loss_lib.var_loss(logits_BLV, idx_BL, patch_nums, label_smoothing=label_smoothing)

  (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(metrics, grad_norm=optax.tree.norm(grads), lr=lr_fn(state.step))
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(state: state_lib.TrainState, batch: dict, *, model: var_lib.VAR, tokenizer: nn.Module):
  """Loss metrics of the current params on a batch (no dropout, no label smoothing)."""
  idx_BL, x_BLC = teacher_forcing(tokenizer, state.frozen, batch, model.patch_nums)
  logits_BLV = model.apply({'params': state.params}, batch['label'], x_BLC, train=False)
  return loss_lib.var_loss(logits_BLV, idx_BL, model.patch_nums)[1]


def _check(ok: bool, message: str) -> None:
  if not ok:
    raise errors.ConfigError(f'config: {message}')


class VarTask(task_lib.Task):
  """VAR training; the tokenizer (`tokenizer.path`, or random from `tokenizer.seed`) is frozen."""

  name = 'var'
  console_keys = ('loss', 'loss_last_scale', 'acc', 'lr', 'grad_norm')
  summary_keys = ('loss', 'loss_last_scale', 'acc')

  @classmethod
  def default_config(cls) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # VAR attributes (var_jax.models.var.VAR); None width/heads/drop-path follow model.depth.
    c.model = ml_collections.ConfigDict(dict(
        vocab_size=4096, cvae=32, patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16), num_classes=1000,
        depth=16, embed_dim=config_dict.placeholder(int), num_heads=config_dict.placeholder(int),
        mlp_ratio=4.0, norm_eps=1e-6, shared_aln=False, attn_l2_norm=True, cond_drop_rate=0.1,
        drop_path_rate=config_dict.placeholder(float), dtype='float32', scan_layers=True, remat_policy='none',
        attention='auto'))
    c.tokenizer = tokenizer_group()
    c.optim = ml_collections.ConfigDict(dict(label_smoothing=0.0))
    # Fine-tuning: params (not optimizer state) from an official state dict or a var_jax run folder before
    # step 0 (var_jax.train.finetune); a resumed run restores its own checkpoints instead.
    c.init = ml_collections.ConfigDict(dict(path=config_dict.placeholder(str)))
    return c

  @classmethod
  def resolve(cls, c: ml_collections.ConfigDict) -> None:
    try:
      model = var_lib.resolve(c.model)
    except ValueError as e:
      raise errors.ConfigError(f'config: {e}') from None
    c.model.update(model)
    tok = c.tokenizer
    # With tokenizer.path the loaded tokenizer's own config counts (checked when the task is built).
    if not tok.path:
      _check(tuple(tok.patch_nums) == model['patch_nums'], f'tokenizer.patch_nums={tuple(tok.patch_nums)} '
             f'differs from model.patch_nums={model["patch_nums"]}')
      _check((tok.vocab_size, tok.z_channels) == (model['vocab_size'], model['cvae']),
             f'tokenizer (vocab_size={tok.vocab_size}, z_channels={tok.z_channels}) does not match model '
             f'(vocab_size={model["vocab_size"]}, cvae={model["cvae"]})')
    name = c.data.name
    _check(name != data_config.TOKENS or tok.path, 'data.name="tokens" needs tokenizer.path (the tokenizer '
           'that made them)')
    if name not in data_config.TOKEN_SOURCES and not tok.path:
      expected = tokenizer_lib.image_size(tok.patch_nums, tok.ch_mult)
      _check(c.data.image_size == expected, f'data.image_size={c.data.image_size} but the tokenizer maps '
             f'{expected}px images to the last scale {model["patch_nums"][-1]}')

  @classmethod
  def sizes(cls, c: ml_collections.ConfigDict) -> task_lib.Sizes:
    model = var_lib.resolve(c.model)
    counts = flops.param_counts(model)
    return task_lib.Sizes(
        params=counts['total'], params_nonembed=counts['nonembed'],
        tokens_per_example=flops.tokens_per_image(model['patch_nums']),
        flops_per_example=flops.train_flops_per_image(model))

  @classmethod
  def columns(cls, c: ml_collections.ConfigDict) -> dict[str, Any]:
    try:
      model = var_lib.resolve(c.model)
    except ValueError:
      model = c.model.to_dict()
    return dict(depth=model.get('depth'), width=model.get('embed_dim'), heads=model.get('num_heads'))

  @classmethod
  def run_prefix(cls, c: ml_collections.ConfigDict) -> str:
    return f'd{c.model.depth}'

  def __init__(self, config: ml_collections.ConfigDict):
    self.model_kwargs = var_lib.resolve(config.model)
    self.model = var_lib.VAR(**self.model_kwargs)
    self.patch_nums = tuple(self.model_kwargs['patch_nums'])
    self.tokenizer, self._tok_params = vqvae.from_config(config.tokenizer)
    have = (self.tokenizer.vocab_size, self.tokenizer.z_channels, tuple(self.tokenizer.patch_nums))
    want = (self.model.vocab_size, self.model.cvae, self.patch_nums)
    if have != want:
      raise errors.ConfigError(f'tokenizer.path={config.tokenizer.path}: (vocab_size, z_channels, patch_nums)='
                               f'{have} does not match the model\'s (vocab_size, cvae, patch_nums)={want}')
    self.lr_fn = state_lib.lr_schedule(config.optim, config.optim.total_steps)
    super().__init__(config)

  def init_params(self, key: jax.Array, start: Any = None) -> Any:
    L = self.model.seq_len - self.model.first_l
    label = jnp.zeros((1,), jnp.int32)
    x_BLC = jnp.zeros((1, L, self.model.cvae), jnp.float32)
    fresh = self.model.init({'params': key, 'dropout': key}, label, x_BLC, train=False)['params']
    return finetune.merge(fresh, start)

  def start_params(self) -> task_lib.Start | None:
    if not self.config.init.path:
      return None
    return task_lib.Start(*finetune.load(str(self.config.init.path), self.model, self.abstract_params))

  def frozen(self) -> Any:
    return self._tok_params

  def train_step(self, state, batch, rng):
    return train_step(state, batch, rng, model=self.model, tokenizer=self.tokenizer, tx=self.tx,
                      lr_fn=self.lr_fn, label_smoothing=self.config.optim.label_smoothing)

  def eval_step(self, state, batch):
    return eval_step(state, batch, model=self.model, tokenizer=self.tokenizer)

  def batches(self, split: str, *, process_index: int, process_count: int):
    """The task's batches, after checking the dataset's classes against model.num_classes."""
    loader = super().batches(split, process_index=process_index, process_count=process_count)
    have, want = getattr(loader, 'num_classes', None), self.model.num_classes  # synthetic tokens have none
    if have is None:
      return loader
    if have > want:
      raise errors.ConfigError(f'model.num_classes={want} but data.name={self.config.data.name!r} has {have} '
                               f'classes; set model.num_classes >= {have}')
    if have < want:
      logging.warning('data.name=%r has %d classes, model.num_classes=%d: classes %d.. are never seen',
                      self.config.data.name, have, want, have)
    return loader

  def loader_kwargs(self) -> dict[str, Any]:
    spec = synthetic_tokens.TokenSpec(seq_len=self.model.seq_len, vocab_size=self.model.vocab_size,
                                      num_classes=self.model.num_classes)
    kwargs = dict(token_spec=spec)
    if self.config.data.name == data_config.TOKENS:
      kwargs['tokenizer_fingerprint'] = sd.fingerprint(self._tok_params)
    return kwargs

  def describe(self) -> dict[str, Any]:
    return dict(self.model_kwargs)


TASK = VarTask
