"""`task = 'maskgit'`: masked parallel decoding (var_jax.models.maskgit) on a frozen single-scale tokenizer.

The harness of `task = 'next_token'` (its config groups and checks, tokens from images or pre-tokenized
batches, frozen tokenizer, sizes and exports), with the MaskGIT model and objective: per image a ratio
r ~ U[0, 1), ceil(cos(pi r / 2) n²) tokens replaced by [MASK] at random, cross-entropy on those
positions only. Evaluation masks with ratios stratified over the batch (`maskgit.eval_ratios`) and a
fixed key, so the eval loss is deterministic and comparable across checkpoints and sizes. Sizes and
FLOPs are `var_jax.flops`'s closed forms with `order='masked'` (the whole map runs forward and backward).
"""
from __future__ import annotations

import jax

from var_jax.models import loss as loss_lib
from var_jax.models import maskgit as maskgit_lib
from var_jax.train import task as task_lib
from var_jax.train.tasks import next_token as next_token_task

EVAL_SEED = 0  # the key of the evaluation masks


def masked_inputs(model: maskgit_lib.MaskGIT, idx_BL, ratio_B, rng):
  """(input tokens with MASK_ID, mask_BL) for masking ratios ratio_B, the positions drawn from rng."""
  mask_BL = maskgit_lib.random_mask(rng, maskgit_lib.masked_count(ratio_B, model.seq_len), model.seq_len)
  return maskgit_lib.apply_mask(idx_BL, mask_BL, model.mask_id), mask_BL


def train_step(state, batch, rng, *, model, tokenizer, tx, lr_fn, label_smoothing: float = 0.0):
  """One optimizer step; metrics as `loss.masked_loss`, + grad_norm and lr."""
  idx_BL = next_token_task.tokens(tokenizer, state.frozen, batch)
  key_ratio, key_mask, key_dropout = jax.random.split(jax.random.fold_in(rng, state.step), 3)
  ratio_B = maskgit_lib.train_ratios(key_ratio, idx_BL.shape[0])
  input_BL, mask_BL = masked_inputs(model, idx_BL, ratio_B, key_mask)

  def loss_fn(params):
    logits_BLV = model.apply({'params': params}, batch['label'], input_BL, train=True,
                             rngs={'dropout': key_dropout})
    return loss_lib.masked_loss(logits_BLV, idx_BL, mask_BL, label_smoothing=label_smoothing)

  return task_lib.gradient_step(state, loss_fn, tx, lr_fn)


def eval_step(state, batch, *, model, tokenizer):
  idx_BL = next_token_task.tokens(tokenizer, state.frozen, batch)
  ratio_B = maskgit_lib.eval_ratios(idx_BL.shape[0])
  input_BL, mask_BL = masked_inputs(model, idx_BL, ratio_B, jax.random.key(EVAL_SEED))
  logits_BLV = model.apply({'params': state.params}, batch['label'], input_BL, train=False)
  return loss_lib.masked_loss(logits_BLV, idx_BL, mask_BL)[1]


class MaskGITTask(next_token_task.NextTokenTask):
  """MaskGIT training; the config keys are task 'next_token''s (the same model fields and tokenizer)."""

  name = 'maskgit'
  model_type, order = maskgit_lib.MaskGIT, 'masked'
  resolve_model = staticmethod(maskgit_lib.resolve)

  def train_step(self, state, batch, rng):
    return train_step(state, batch, rng, model=self.model, tokenizer=self.tokenizer, tx=self.tx,
                      lr_fn=self.lr_fn, label_smoothing=self.config.optim.label_smoothing)

  def eval_step(self, state, batch):
    return eval_step(state, batch, model=self.model, tokenizer=self.tokenizer)


TASK = MaskGITTask
