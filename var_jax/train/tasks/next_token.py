"""`task = 'next_token'`: the raster-order baseline (var_jax.models.next_token) on a frozen single-scale tokenizer.

The same harness as `task = 'var'` (tasks/var.py: its tokenizer group, batches, frozen tokenizer and
exports), with the next-token model and loss: a batch of images is tokenized in the step by the frozen
VQVAE whose `patch_nums = (n,)` (one n x n map), or pre-tokenized `{'tokens': i32[B, n²]}`; the loss is
next-token cross-entropy over the n² positions. Sizes and FLOPs are `var_jax.flops`'s closed forms with
`order='raster'`.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from ml_collections import config_dict

from var_jax import errors
from var_jax import flops
from var_jax.data import config as data_config
from var_jax.models import loss as loss_lib
from var_jax.models import next_token as next_token_lib
from var_jax.models import tokenizer as tokenizer_lib
from var_jax.train import state as state_lib
from var_jax.train import task as task_lib
from var_jax.train.tasks import var as var_task
from var_jax.weights import vqvae

PATCH_NUMS = (16,)


def tokens(tokenizer, tok_params, batch: dict) -> jax.Array:
  """(B, n²) target tokens in raster order, from images or pre-tokenized batches."""
  if 'tokens' in batch:
    return batch['tokens']
  idx_list = tokenizer.apply({'params': tok_params}, batch['image'], method='img_to_idx')
  return jax.lax.stop_gradient(idx_list[0])


def train_step(state, batch, rng, *, model, tokenizer, tx: optax.GradientTransformation,
               lr_fn: optax.Schedule, label_smoothing: float = 0.0):
  """One optimizer step; metrics as `loss.var_loss` with its one scale, + grad_norm and lr."""
  idx_BL = tokens(tokenizer, state.frozen, batch)
  step_rng = jax.random.fold_in(rng, state.step)

  def loss_fn(params):
    logits_BLV = model.apply({'params': params}, batch['label'], idx_BL, train=True,
                             rngs={'dropout': step_rng})
    return loss_lib.var_loss(logits_BLV, idx_BL, model.patch_nums, label_smoothing=label_smoothing)

  return task_lib.gradient_step(state, loss_fn, tx, lr_fn)


def eval_step(state, batch, *, model, tokenizer):
  idx_BL = tokens(tokenizer, state.frozen, batch)
  logits_BLV = model.apply({'params': state.params}, batch['label'], idx_BL, train=False)
  return loss_lib.var_loss(logits_BLV, idx_BL, model.patch_nums)[1]


def _check(ok: bool, message: str) -> None:
  if not ok:
    raise errors.ConfigError(f'config: {message}')


class NextTokenTask(var_task.VarTask):
  """Raster next-token training; the single-scale tokenizer is frozen as in task 'var'.

  Other single-map orderings (tasks/maskgit.py) reuse this harness with their own model and FLOP order
  (`model_cls`, `resolve_model`, `flop_order`) and their own steps.
  """

  name = 'next_token'
  model_cls = next_token_lib.NextToken
  resolve_model = staticmethod(next_token_lib.resolve)
  flop_order = 'raster'
  console_keys = ('loss', 'acc', 'lr', 'grad_norm')
  summary_keys = ('loss', 'acc')

  @classmethod
  def default_config(cls) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # NextToken (or MaskGIT) attributes (var_jax.models.next_token); None width/heads/drop-path follow depth.
    c.model = ml_collections.ConfigDict(dict(
        vocab_size=4096, patch_nums=PATCH_NUMS, num_classes=1000, depth=16,
        embed_dim=config_dict.placeholder(int), num_heads=config_dict.placeholder(int), mlp_ratio=4.0,
        norm_eps=1e-6, shared_aln=False, attn_l2_norm=True, cond_drop_rate=0.1,
        drop_path_rate=config_dict.placeholder(float), dtype='float32', scan_layers=True,
        remat_policy='none', attention='auto'))
    c.tokenizer = var_task.tokenizer_group()
    c.tokenizer.patch_nums = PATCH_NUMS
    c.optim = ml_collections.ConfigDict(dict(label_smoothing=0.0))
    return c

  @classmethod
  def resolve(cls, c: ml_collections.ConfigDict) -> None:
    try:
      model = cls.resolve_model(c.model)
    except ValueError as e:
      raise errors.ConfigError(f'config: {e}') from None
    c.model.update(model)
    tok = c.tokenizer
    if not tok.path:  # with a path, the loaded tokenizer is checked when the task is built
      _check(tuple(tok.patch_nums) == model['patch_nums'], f'tokenizer.patch_nums={tuple(tok.patch_nums)} '
             f'differs from model.patch_nums={model["patch_nums"]} (the {cls.name} model reads one map)')
      _check(tok.vocab_size == model['vocab_size'], f'tokenizer.vocab_size={tok.vocab_size} differs from '
             f'model.vocab_size={model["vocab_size"]}')
    _check(c.data.name != data_config.TOKENS or tok.path, 'data.name="tokens" needs tokenizer.path (the '
           'tokenizer that made them)')
    if c.data.name not in data_config.TOKEN_SOURCES and not tok.path:
      expected = tokenizer_lib.image_size(tok.patch_nums, tok.ch_mult)
      _check(c.data.image_size == expected, f'data.image_size={c.data.image_size} but the tokenizer maps '
             f'{expected}px images to its {model["patch_nums"][0]}x{model["patch_nums"][0]} map')

  @classmethod
  def sizes(cls, c: ml_collections.ConfigDict) -> task_lib.Sizes:
    model = cls.resolve_model(c.model)
    counts = flops.param_counts(model, order=cls.flop_order)
    return task_lib.Sizes(
        params=counts['total'], params_nonembed=counts['nonembed'],
        tokens_per_example=flops.tokens_per_image(model['patch_nums']),
        flops_per_example=flops.train_flops_per_image(model, order=cls.flop_order))

  @classmethod
  def columns(cls, c: ml_collections.ConfigDict) -> dict[str, Any]:
    try:
      model = cls.resolve_model(c.model)
    except ValueError:
      model = c.model.to_dict()
    return dict(depth=model.get('depth'), width=model.get('embed_dim'), heads=model.get('num_heads'))

  def __init__(self, config: ml_collections.ConfigDict):  # pylint: disable=super-init-not-called
    self.model_kwargs = self.resolve_model(config.model)
    self.model = self.model_cls(**self.model_kwargs)
    self.patch_nums = tuple(self.model_kwargs['patch_nums'])
    self.tokenizer, self._tok_params = vqvae.from_config(config.tokenizer)
    have = (self.tokenizer.vocab_size, tuple(self.tokenizer.patch_nums))
    want = (self.model.vocab_size, self.patch_nums)
    if have != want:
      raise errors.ConfigError(f'tokenizer.path={config.tokenizer.path}: (vocab_size, patch_nums)={have} '
                               f'does not match the model\'s {want}')
    self.lr_fn = state_lib.lr_schedule(config.optim, config.optim.total_steps)
    task_lib.Task.__init__(self, config)

  def start_params(self) -> Any:
    return None  # no `init.path` here: VAR's official checkpoints do not fit this model

  def init_params(self, key: jax.Array, start: Any = None) -> Any:
    if start is not None:
      return start
    label, idx = jnp.zeros((1,), jnp.int32), jnp.zeros((1, self.model.seq_len), jnp.int32)
    return self.model.init({'params': key, 'dropout': key}, label, idx, train=False)['params']

  def train_step(self, state, batch, rng):
    return train_step(state, batch, rng, model=self.model, tokenizer=self.tokenizer, tx=self.tx,
                      lr_fn=self.lr_fn, label_smoothing=self.config.optim.label_smoothing)

  def eval_step(self, state, batch):
    return eval_step(state, batch, model=self.model, tokenizer=self.tokenizer)


TASK = NextTokenTask
