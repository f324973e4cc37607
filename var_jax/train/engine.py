"""The sharded engine: model, tokenizer, shardings and the compiled init/train/eval functions.

Everything that touches a mesh is here, so the loop, the benchmark and tests share one code path.
Params and optimizer state are created already sharded (`jax.jit(init, out_shardings=...)`); the
train step is compiled once with explicit in/out shardings and the state donated.
"""
from __future__ import annotations

import contextlib
import functools
import math
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from var_jax import flops
from var_jax import sharding
from var_jax.models import tokenizer as tokenizer_lib
from var_jax.models import var as var_lib
from var_jax.train import config as config_lib
from var_jax.train import state as state_lib
from var_jax.train import step as step_lib
from var_jax.train import synthetic

TOKENIZER_SOURCE_KEYS = ('path', 'seed')


def tokenizer_kwargs(tok_cfg: Any) -> dict:
  """VQVAE attributes from `config.tokenizer` (minus where its weights come from)."""
  kwargs = {k: v for k, v in tok_cfg.items() if k not in TOKENIZER_SOURCE_KEYS}
  for key in ('ch_mult', 'patch_nums'):
    kwargs[key] = tuple(kwargs[key])
  return kwargs


def _init_tokenizer(tokenizer: nn.Module, image_size: int, key):
  return tokenizer.init({'params': key}, jnp.zeros((1, image_size, image_size, 3), jnp.float32))[
      'params']


@functools.lru_cache(maxsize=4)
def random_tokenizer_params(tokenizer: nn.Module, image_size: int, seed: int) -> Any:
  """Randomly initialised tokenizer params as host arrays, computed once per process.

  Compiling the VQVAE init is slow on CPU (it is all convolution initialisers); engines for
  several meshes in one process (tests, benchmarks) share the result.
  """
  init = jax.jit(functools.partial(_init_tokenizer, tokenizer, image_size))
  return jax.device_get(init(jax.random.key(seed)))


class RunRng:
  """The run's base PRNG key: on the host for checkpoints, replicated on `self.mesh` for the steps."""

  def set_rng(self, key_data) -> None:
    """The run's base key (raw key data, e.g. from a checkpoint); step keys fold in the step."""
    self._rng_host = np.asarray(key_data, np.uint32)
    self.rng_data = sharding.put_replicated(self._rng_host, self.mesh)

  def rng_list(self) -> list[int]:
    return self._rng_host.tolist()


class Engine(RunRng):
  """Compiled, sharded training functions for one resolved config on one mesh."""

  def __init__(self, config: Any, devices=None):
    self.config = config
    self.mesh = sharding.make_mesh(config.mesh, devices)
    self.rules = sharding.rules_from_config(config.sharding.rules)
    self.model_kwargs = {k: (tuple(v) if isinstance(v, list) else v)
                         for k, v in config.model.to_dict().items()}
    self.model = var_lib.VAR(**self.model_kwargs)
    self.patch_nums = tuple(self.model_kwargs['patch_nums'])
    self.tokenizer, self._tok_params = self._build_tokenizer()
    self.replicated = sharding.replicated(self.mesh)
    self.batch_sharding = sharding.batch_sharding(self.mesh)
    self._build_shardings()
    self.set_rng(jax.random.key_data(jax.random.key(config.seed)))
    self._compiled = {}

  # ---- construction -------------------------------------------------------------------------

  def _build_tokenizer(self):
    tok_cfg = self.config.tokenizer
    if not tok_cfg.path:
      return tokenizer_lib.VQVAE(**tokenizer_kwargs(tok_cfg)), None
    from var_jax import convert  # pylint: disable=g-import-not-at-top
    module, params = convert.load_tokenizer(tok_cfg.path)
    have = (module.vocab_size, module.z_channels, tuple(module.patch_nums))
    want = (self.model_kwargs['vocab_size'], self.model_kwargs['cvae'], self.patch_nums)
    if have != want:
      raise ValueError(f'tokenizer.path={tok_cfg.path}: (vocab_size, z_channels, patch_nums)={have} '
                       f'does not match the model\'s (vocab_size, cvae, patch_nums)={want}')
    return module, params

  def _model_inputs(self):
    L = sum(p * p for p in self.patch_nums)
    label = jnp.zeros((1,), jnp.int32)
    x_BLC = jnp.zeros((1, L - self.patch_nums[0] ** 2, self.model_kwargs['cvae']), jnp.float32)
    return label, x_BLC

  def _boxed_params(self, key):
    return self.model.init({'params': key, 'dropout': key}, *self._model_inputs(),
                           train=False)['params']

  def _build_shardings(self):
    key = jax.random.key(0)
    boxed = jax.eval_shape(self._boxed_params, key)
    self.logical_specs = nn.get_partition_spec(boxed)
    self.abstract_params = nn.meta.unbox(boxed)
    param_shardings = sharding.logical_shardings(self.logical_specs, self.mesh, self.rules)
    sharding.check_fsdp(param_shardings, self.abstract_params, self.mesh,
                        self.config.sharding.fsdp_min_size)
    self.tx = state_lib.make_optimizer(self.config.optim, self.config.steps, self.logical_specs)
    self.lr_fn = state_lib.lr_schedule(self.config.optim, self.config.steps)
    if self._tok_params is None:
      abstract_tok = jax.eval_shape(functools.partial(
          _init_tokenizer, self.tokenizer, config_lib.tokenizer_image_size(self.config.tokenizer)),
          key)
    else:
      abstract_tok = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype),
                                  self._tok_params)
    self.state_shardings = state_lib.TrainState(
        step=self.replicated, params=param_shardings,
        opt_state=state_lib.opt_state_shardings(self.tx, self.abstract_params, param_shardings,
                                                self.replicated),
        frozen=jax.tree.map(lambda _: self.replicated, abstract_tok))
    self.abstract_tok = abstract_tok

  def abstract_state(self) -> state_lib.TrainState:
    """ShapeDtypeStructs (with shardings) of the train state: for lowering without allocating."""
    abstract = state_lib.TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32), params=self.abstract_params,
        opt_state=jax.eval_shape(self.tx.init, self.abstract_params), frozen=self.abstract_tok)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        abstract, self.state_shardings)

  @contextlib.contextmanager
  def _in_mesh(self):
    """Tracing context: the mesh plus the flax logical-axis rules for activation constraints."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      yield

  def init_state(self) -> state_lib.TrainState:
    """Fresh params (seed `config.seed`) and optimizer state, created directly in their shards."""
    tok_params = self._tok_params
    if tok_params is None:
      tok_params = random_tokenizer_params(
          self.tokenizer, config_lib.tokenizer_image_size(self.config.tokenizer),
          self.config.tokenizer.seed)
    frozen = sharding.put_replicated(tok_params, self.mesh)

    def init(key, frozen):
      params = nn.meta.unbox(self._boxed_params(key))
      return state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                  opt_state=self.tx.init(params), frozen=frozen)

    with self._in_mesh():
      return jax.jit(init, out_shardings=self.state_shardings)(
          jax.random.key(self.config.seed), frozen)

  # ---- compiled steps -----------------------------------------------------------------------

  def _train_fn(self, state, batch, rng_data):
    return step_lib.train_step(
        state, batch, jax.random.wrap_key_data(rng_data), model=self.model,
        tokenizer=self.tokenizer, tx=self.tx, lr_fn=self.lr_fn,
        label_smoothing=self.config.optim.label_smoothing)

  def _eval_fn(self, state, batch):
    return step_lib.eval_step(state, batch, model=self.model, tokenizer=self.tokenizer)

  def lower_train_step(self, state, batch):
    """Lowered train step for (abstract or concrete) state and global batch."""
    jitted = jax.jit(self._train_fn,
                     in_shardings=(self.state_shardings, self.batch_sharding, self.replicated),
                     out_shardings=(self.state_shardings, self.replicated), donate_argnums=0)
    with self._in_mesh():
      return jitted.lower(state, batch, self.rng_data)

  def _compile(self, name, lower):
    if name not in self._compiled:
      self._compiled[name] = lower().compile()
    return self._compiled[name]

  def compile_train_step(self, state, batch) -> float:
    """Compiles the train step ahead of time (once); returns the seconds it took."""
    start = time.perf_counter()
    self._compile('train', functools.partial(self.lower_train_step, state, batch))
    return time.perf_counter() - start

  def train_step(self, state, batch):
    """(new state, metrics) for a global batch; compiles on the first call. `state` is donated."""
    compiled = self._compile('train', functools.partial(self.lower_train_step, state, batch))
    return compiled(state, batch, self.rng_data)

  def eval_step(self, state, batch):
    def lower():
      jitted = jax.jit(self._eval_fn, in_shardings=(self.state_shardings, self.batch_sharding),
                       out_shardings=self.replicated)
      with self._in_mesh():
        return jitted.lower(state, batch)
    return self._compile('eval', lower)(state, batch)

  # ---- data ---------------------------------------------------------------------------------

  def global_batch(self, local: dict) -> dict:
    """This process's rows -> global arrays split over data x fsdp."""
    return {k: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(v))
            for k, v in local.items()}

  def batches(self, split: str):
    """Per-process batch iterator for 'train' or 'eval' (get_state/set_state for resuming)."""
    c, train = self.config, split == 'train'
    batch_size = c.batch_size if train else c.eval.batch_size
    if c.data.name == config_lib.SYNTHETIC_TOKENS:
      return synthetic.SyntheticTokens(
          global_batch_size=batch_size, patch_nums=self.patch_nums,
          vocab_size=self.model_kwargs['vocab_size'],
          num_classes=self.model_kwargs['num_classes'], seed=c.seed + (0 if train else 1),
          process_index=jax.process_index(), process_count=jax.process_count())
    from var_jax import data  # pylint: disable=g-import-not-at-top
    fingerprint = None
    if c.data.name == 'tokens':
      from var_jax import convert  # pylint: disable=g-import-not-at-top
      fingerprint = convert.fingerprint(jax.device_get(self._tok_params))
    return data.make_loader(
        c.data, split=c.data.train_split if train else c.data.eval_split,
        global_batch_size=batch_size, seed=c.seed, train=train,
        process_index=jax.process_index(), process_count=jax.process_count(),
        tokenizer_fingerprint=fingerprint)

  # ---- accounting ---------------------------------------------------------------------------

  @property
  def num_params(self) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(self.abstract_params))

  @property
  def tokens_per_step(self) -> int:
    return self.config.batch_size * sum(p * p for p in self.patch_nums)

  @property
  def flops_per_step(self) -> float:
    return self.config.batch_size * flops.train_flops_per_image(self.model_kwargs)

