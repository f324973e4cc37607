"""The sharded engine: one task's state, shardings and compiled init/train/eval functions on one mesh.

Everything that touches a mesh is here, so the loop, the benchmark and the tests share one code path for every
task. The state's shardings come from the task's logical axis names and the config's rules; params and
optimizer state are created already sharded (`jax.jit(init, out_shardings=...)`); the train step is compiled
once with explicit in/out shardings and the state donated. `train_steps` runs several steps in one compiled call
(a `lax.scan` over global batches stacked on a leading step axis), so small models do not pay a dispatch per step.
"""
from __future__ import annotations

import contextlib
import time
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from var_jax import sharding
from var_jax.train import state as state_lib
from var_jax.train import task as task_lib
from var_jax.train import tasks


class Engine:
  """Compiled, sharded training functions of `config.task` for one resolved config on one mesh."""

  def __init__(self, config: Any, devices=None):
    self.config = config
    self.mesh = sharding.make_mesh(config.mesh, devices)
    self.rules = sharding.rules_from_config(config.sharding.rules)
    task_cls = tasks.get(config.task)
    self.task = task_cls(config)
    self.sizes = task_cls.sizes(config)
    self.replicated = sharding.replicated(self.mesh)
    self.batch_sharding = sharding.batch_sharding(self.mesh)
    self.stacked_batch_sharding = sharding.batch_sharding(self.mesh, stacked=True)
    self._frozen_host = self.task.frozen()
    with self._in_mesh():
      self.state_shardings = sharding.logical_shardings(
          self.task.state_logical_specs(self._frozen_host), self.mesh, self.rules)
    sharding.check_fsdp(self.state_shardings.params, self.task.abstract_params, self.mesh,
                        config.sharding.fsdp_min_size)
    self.set_rng(jax.random.key_data(jax.random.key(config.seed)))
    self._compiled = {}

  # ---- the run's RNG --------------------------------------------------------------------------------

  def set_rng(self, key_data) -> None:
    """The run's base key (raw key data, e.g. from a checkpoint); step keys fold in the step."""
    self._rng_host = np.asarray(key_data, np.uint32)
    self.rng_data = sharding.put_replicated(self._rng_host, self.mesh)

  def rng_list(self) -> list[int]:
    return self._rng_host.tolist()

  # ---- state ----------------------------------------------------------------------------------------

  @contextlib.contextmanager
  def _in_mesh(self):
    """Tracing context: the mesh plus the flax logical-axis rules for activation constraints."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      yield

  def abstract_state(self) -> state_lib.TrainState:
    """ShapeDtypeStructs (with shardings) of the train state: for lowering without allocating."""
    abstract = jax.eval_shape(self.task.init_state, jax.random.key(0), self._frozen_host)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract,
                        self.state_shardings)

  def init_state(self, start: task_lib.Start | None = None) -> state_lib.TrainState:
    """The task's fresh state, or one from `start` (`task.start_params()`), seeded by `config.seed`, created
    directly in its shards."""
    frozen = sharding.put_replicated(self._frozen_host, self.mesh)
    if start is not None:
      start = sharding.put_replicated(start.params, self.mesh)
    with self._in_mesh():
      return jax.jit(self.task.init_state, out_shardings=self.state_shardings)(
          jax.random.key(self.config.seed), frozen, start)

  # ---- compiled steps -------------------------------------------------------------------------------

  def _train_fn(self, state, batch, rng_data):
    return self.task.train_step(state, batch, jax.random.wrap_key_data(rng_data))

  def lower_train_step(self, state, batch):
    """Lowered train step for (abstract or concrete) state and global batch."""
    jitted = jax.jit(self._train_fn, in_shardings=(self.state_shardings, self.batch_sharding, self.replicated),
                     out_shardings=(self.state_shardings, self.replicated), donate_argnums=0)
    with self._in_mesh():
      return jitted.lower(state, batch, self.rng_data)

  def _train_steps_fn(self, state, batch_N, rng_data):
    return jax.lax.scan(lambda s, batch: self._train_fn(s, batch, rng_data), state, batch_N)

  def train_steps(self, state, batch_N):
    """(new state, metrics stacked [N]) after N steps over global batches stacked on a leading axis (see
    `stacked_batch`); one compiled call per N. `state` is donated."""
    n = jax.tree.leaves(batch_N)[0].shape[0]

    def lower():
      jitted = jax.jit(self._train_steps_fn,
                       in_shardings=(self.state_shardings, self.stacked_batch_sharding, self.replicated),
                       out_shardings=(self.state_shardings, self.replicated), donate_argnums=0)
      with self._in_mesh():
        return jitted.lower(state, batch_N, self.rng_data)
    return self._compile(f'train_steps{n}', lower)(state, batch_N, self.rng_data)

  def _compile(self, name, lower):
    if name not in self._compiled:
      self._compiled[name] = lower().compile()
    return self._compiled[name]

  def compile_train_step(self, state, batch) -> float:
    """Compiles the train step ahead of time (once); returns the seconds it took."""
    start = time.perf_counter()
    self._compile('train', lambda: self.lower_train_step(state, batch))
    return time.perf_counter() - start

  def train_step(self, state, batch):
    """(new state, metrics) for a global batch; compiles on the first call. `state` is donated."""
    compiled = self._compile('train', lambda: self.lower_train_step(state, batch))
    return compiled(state, batch, self.rng_data)

  def eval_step(self, state, batch):
    def lower():
      jitted = jax.jit(self.task.eval_step, in_shardings=(self.state_shardings, self.batch_sharding),
                       out_shardings=self.replicated)
      with self._in_mesh():
        return jitted.lower(state, batch)
    return self._compile('eval', lower)(state, batch)

  # ---- data -----------------------------------------------------------------------------------------

  def global_batch(self, local: dict) -> dict:
    """This process's rows -> global arrays split over data x fsdp."""
    return {k: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(v))
            for k, v in local.items()}

  def stacked_batch(self, local_batches: list[dict]) -> dict:
    """N of this process's batches -> global arrays [N, B, ...]: the step axis whole, rows over data x fsdp."""
    return {k: jax.make_array_from_process_local_data(self.stacked_batch_sharding,
                                                      np.stack([np.asarray(b[k]) for b in local_batches]))
            for k in local_batches[0]}

  def batches(self, split: str):
    """This process's batch iterator for 'train' or 'eval' (get_state/set_state for resuming)."""
    return self.task.batches(split, process_index=jax.process_index(), process_count=jax.process_count())

  # ---- accounting -----------------------------------------------------------------------------------

  @property
  def num_params(self) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.task.abstract_params))

  @property
  def tokens_per_step(self) -> int:
    return self.config.batch_size * self.sizes.tokens_per_example

  @property
  def flops_per_step(self) -> float:
    return self.config.batch_size * self.sizes.flops_per_example
