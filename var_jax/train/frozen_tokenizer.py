"""The base of the tasks that train a token model on a frozen tokenizer's tokens (`var`, `next_token`).

The tokenizer (`tokenizer.path`, or random from `tokenizer.seed`: `var_jax.weights.vqvae.from_config`) is the
state's `frozen` part, read by the steps but never trained or checkpointed. A batch is images
`{'image': f32[B,H,W,3], 'label': i32[B]}`, tokenized in the step, or pre-tokenized `{'tokens': i32[B,L]}`.
A subclass names its network (`model_type`, `resolve_model`), the attributes it shares with the tokenizer
(`FITS`), its FLOP `order` (`var_jax.flops`), the targets and network input of a batch (`targets_and_inputs`)
and its init; the loss is `var_jax.models.loss.var_loss` over the model's scales.
"""
from __future__ import annotations

import abc
from typing import Any, ClassVar, Mapping

from absl import logging
import jax
import ml_collections

from var_jax import errors
from var_jax import flops
from var_jax.data import config as data_config
from var_jax.data import synthetic_tokens
from var_jax.models import loss as loss_lib
from var_jax.models import tokenizer as tokenizer_lib
from var_jax.train import state as state_lib
from var_jax.train import task as task_lib
from var_jax.weights import state_dict as sd
from var_jax.weights import vqvae


def _values(obj: Any, names) -> tuple:
  get = obj.get if isinstance(obj, Mapping) else lambda n: getattr(obj, n)
  return tuple(tuple(v) if isinstance(v, (list, tuple)) else v for v in map(get, names))


class FrozenTokenizerTask(task_lib.Task):
  """A token model trained on a frozen tokenizer; see the module docstring."""

  model_type: ClassVar[type]
  order: ClassVar[str]  # `var_jax.flops` order: 'next_scale' or 'raster'
  FITS: ClassVar[tuple[tuple[str, str], ...]]  # (model attribute, tokenizer attribute) that must agree

  @staticmethod
  @abc.abstractmethod
  def resolve_model(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The network's attributes from a config's `model` group; ConfigError for bad ones."""

  @abc.abstractmethod
  def targets_and_inputs(self, tok_params: Any, batch: task_lib.Batch) -> tuple[jax.Array, Any]:
    """(target tokens [B, L], the network's teacher-forcing input) of a batch, gradients stopped."""

  # ---- configuration -------------------------------------------------------------------------------

  @classmethod
  def resolve(cls, c: ml_collections.ConfigDict) -> None:
    try:
      model = cls.resolve_model(c.model)
    except errors.ConfigError as e:
      raise errors.ConfigError(f'config: {e}') from None
    c.model.update(model)
    tok = c.tokenizer
    if not tok.path:  # with a path, the loaded tokenizer's own config counts (checked when the task is built)
      model_keys, tok_keys = zip(*cls.FITS)
      errors.check_config(_values(tok, tok_keys) == _values(model, model_keys),
                          f'tokenizer {tok_keys}={_values(tok, tok_keys)} does not match model {model_keys}='
                          f'{_values(model, model_keys)}')
    errors.check_config(c.data.name != data_config.TOKENS or tok.path, 'data.name="tokens" needs tokenizer.path '
                        '(the tokenizer that made them)')
    if c.data.name not in data_config.TOKEN_SOURCES and not tok.path:
      expected = tokenizer_lib.image_size(tok.patch_nums, tok.ch_mult)
      errors.check_config(c.data.image_size == expected, f'data.image_size={c.data.image_size} but the tokenizer '
                          f'maps {expected}px images to its last scale {tuple(tok.patch_nums)[-1]}')

  @classmethod
  def sizes(cls, c: ml_collections.ConfigDict) -> task_lib.Sizes:
    model = cls.resolve_model(c.model)
    counts = flops.param_counts(model, order=cls.order)
    return task_lib.Sizes(
        params=counts['total'], params_nonembed=counts['nonembed'],
        tokens_per_example=flops.tokens_per_image(model['patch_nums']),
        flops_per_example=flops.train_flops_per_image(model, order=cls.order))

  @classmethod
  def columns(cls, c: ml_collections.ConfigDict) -> dict[str, Any]:
    try:
      model = cls.resolve_model(c.model)
    except errors.ConfigError:
      model = c.model.to_dict()
    return dict(depth=model.get('depth'), width=model.get('embed_dim'), heads=model.get('num_heads'))

  @classmethod
  def run_prefix(cls, c: ml_collections.ConfigDict) -> str:
    return f'd{c.model.depth}'

  # ---- state ---------------------------------------------------------------------------------------

  def __init__(self, config: ml_collections.ConfigDict):
    self.model_kwargs = self.resolve_model(config.model)
    self.model = self.model_type(**self.model_kwargs)
    self.patch_nums = tuple(self.model_kwargs['patch_nums'])
    self.tokenizer, self._tok_params = vqvae.from_config(config.tokenizer)
    model_keys, tok_keys = zip(*self.FITS)
    have, want = _values(self.tokenizer, tok_keys), _values(self.model, model_keys)
    if have != want:
      raise errors.ConfigError(f'tokenizer.path={config.tokenizer.path}: {tok_keys}={have} does not match the '
                               f'model\'s {model_keys}={want}')
    self.lr_fn = state_lib.lr_schedule(config.optim, config.optim.total_steps)
    super().__init__(config)

  def frozen(self) -> Any:
    return self._tok_params

  # ---- steps ---------------------------------------------------------------------------------------

  def train_step(self, state, batch, rng):
    """One optimizer step on the global batch: the loss terms of `var_loss`, grad_norm and lr."""
    idx_BL, inputs = self.targets_and_inputs(state.frozen, batch)
    step_rng = jax.random.fold_in(rng, state.step)

    def loss_fn(params):
      logits_BLV = self.model.apply({'params': params}, batch['label'], inputs, train=True,
                                    rngs={'dropout': step_rng})
      return loss_lib.var_loss(logits_BLV, idx_BL, self.model.patch_nums,
                               label_smoothing=self.config.optim.label_smoothing)

    return task_lib.gradient_step(state, loss_fn, self.tx, self.lr_fn)

  def eval_step(self, state, batch):
    """Loss metrics of the current params on a batch (no dropout, no label smoothing)."""
    idx_BL, inputs = self.targets_and_inputs(state.frozen, batch)
    logits_BLV = self.model.apply({'params': state.params}, batch['label'], inputs, train=False)
    return loss_lib.var_loss(logits_BLV, idx_BL, self.model.patch_nums)[1]

  # ---- data and outputs ----------------------------------------------------------------------------

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
