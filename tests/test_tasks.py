"""The task registry and engine interface: a toy third task trains, checkpoints and resumes through the real
engine and loop; unknown tasks are one clear error; every task's FLOP count is checked against XLA."""
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from var_jax import errors
from var_jax.train import config as config_lib
from var_jax.train import engine as engine_lib
from var_jax.train import loop
from var_jax.train import task as task_lib
from var_jax.train import tasks


class Crash(Exception):
  pass


class ToyTask(task_lib.Task):
  """A unigram model of synthetic tokens: params are one logit per token."""
  name = 'toy_unigram'
  crash_after = None  # set by a test: the train data stops with Crash after this many batches

  @classmethod
  def default_config(cls):
    return ml_collections.ConfigDict(dict(toy=dict(vocab_size=8)))

  @classmethod
  def sizes(cls, c):
    return task_lib.Sizes(params=c.toy.vocab_size, params_nonembed=c.toy.vocab_size, tokens_per_example=4,
                          flops_per_example=0.0)

  def init_params(self, key, start=None):
    return {'logits': jax.random.normal(key, (self.config.toy.vocab_size,))}

  def _loss(self, params, batch):
    return -jnp.mean(jax.nn.log_softmax(params['logits'])[batch['tokens']])

  def train_step(self, state, batch, rng):
    loss, grads = jax.value_and_grad(self._loss)(state.params, batch)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), dict(
        loss=loss, grad_norm=optax.tree.norm(grads), lr=jnp.float32(self.config.optim.lr))

  def eval_step(self, state, batch):
    return {'loss': self._loss(state.params, batch)}

  def batches(self, split, **kwargs):
    batches = super().batches(split, **kwargs)
    if split != 'train' or self.crash_after is None:
      return batches
    return _Crashing(batches, self.crash_after)

  def loader_kwargs(self):
    from var_jax.data import synthetic_tokens
    return dict(token_spec=synthetic_tokens.TokenSpec(seq_len=4, vocab_size=self.config.toy.vocab_size,
                                                      num_classes=1))


class _Crashing:
  """A batch iterator that dies after `n` batches, as a killed job's would."""

  def __init__(self, batches, n):
    self._batches, self._left = batches, n

  def __next__(self):
    if not self._left:
      raise Crash()
    self._left -= 1
    return next(self._batches)

  def get_state(self):
    return self._batches.get_state()

  def set_state(self, state):
    self._batches.set_state(state)


tasks.register(ToyTask)


def _toy_config(steps):
  c = config_lib.base_config(ToyTask.name)
  c.data.name = 'synthetic_tokens'
  c.update(dict(steps=steps, batch_size=4))
  c.optim.update(dict(lr=0.1, warmup_steps=0))
  c.checkpoint.update(dict(every_steps=1, async_save=False))
  c.log.every_steps = 1
  c.eval.update(dict(every_steps=1, batches=1))
  return c


def _losses(workdir):
  with open(workdir / 'metrics.jsonl') as f:
    return [r['loss'] for r in map(json.loads, f) if r['split'] == 'train']


def test_a_toy_task_trains_checkpoints_and_resumes_through_the_real_loop(tmp_path, monkeypatch):
  devices = jax.devices()[:1]
  straight = loop.train(_toy_config(5), str(tmp_path / 'straight'), devices=devices)
  assert straight['task'] == ToyTask.name and straight['step'] == 5 and straight['params'] == 8
  monkeypatch.setattr(ToyTask, 'crash_after', 3)  # the run dies while reading its 4th batch ...
  with pytest.raises(Crash):
    loop.train(_toy_config(5), str(tmp_path / 'resumed'), devices=devices)
  monkeypatch.setattr(ToyTask, 'crash_after', None)  # ... and the same command resumes it from step 3
  resumed = loop.train(_toy_config(5), str(tmp_path / 'resumed'), devices=devices)
  assert resumed['step'] == 5
  assert _losses(tmp_path / 'resumed') == _losses(tmp_path / 'straight')  # bit for bit
  assert _losses(tmp_path / 'straight')[-1] < _losses(tmp_path / 'straight')[0]


def test_unknown_task_is_one_config_error():
  c = _toy_config(3)
  c.task = 'no_such_task'
  with pytest.raises(errors.ConfigError, match=r"task='no_such_task' is not a known task; expected one of "
                     r"\[.*'tokenizer'.*'var'"):
    config_lib.resolve(c, 1)


def test_a_key_of_another_task_is_unknown():
  c = _toy_config(3)
  c.model = ml_collections.ConfigDict(dict(depth=2))
  with pytest.raises(errors.ConfigError, match=r"unknown key 'model.depth' for task='toy_unigram'"):
    config_lib.resolve(c, 1)


def _xla_flops(engine):
  """XLA's FLOP count of one forward pass of the engine's task model, from `cost_analysis`."""
  cost = engine.lower_train_step(engine.abstract_state(), _abstract_batch(engine)).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost['flops'])


def _abstract_batch(engine):
  local = next(engine.batches('train'))
  return {k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype, sharding=engine.batch_sharding)
          for k, v in local.items()}


def test_tokenizer_flops_follow_the_task_convention_and_xla(tmp_path):
  """3 x the VQVAE forward's conv FLOPs, against XLA's count of the whole train step. XLA adds the
  elementwise work, norms and the optimizer, and leaves out the input gradient of the first convolution (the
  image needs none), which the 3 x forward convention counts: both a few percent."""
  from conftest import load_experiment
  cfg = load_experiment('tokenizer_shapes', 'test')
  cfg.data.data_dir = str(tmp_path)
  cfg.codebook.restart_every = 0
  engine = engine_lib.Engine(config_lib.resolve(cfg, 1), jax.devices()[:1])
  ratio = engine.flops_per_step / _xla_flops(engine)
  assert 0.9 < ratio < 1.1, ratio
