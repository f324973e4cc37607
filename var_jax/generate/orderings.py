"""The orderings a run can be sampled in: one entry per sampled task, picked by the run config's `task`.

An entry says how the config's `model` group builds the network, what its params look like (for the checkpoint
check, computed abstractly) and which compile-once sampler generates with it. Adding an ordering is one
`register` line (or one entry in `_ORDERINGS`); every command that samples (`var-sample`, `var-evaluate`, the
demo, `var-orderings`) then takes its runs.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from var_jax import errors
from var_jax.models import maskgit as maskgit_lib
from var_jax.models import maskgit_sampling
from var_jax.models import next_token as next_token_lib
from var_jax.models import next_token_sampling
from var_jax.models import sampling
from var_jax.models import var as var_lib
from var_jax.weights import var as var_weights


@dataclasses.dataclass(frozen=True)
class Ordering:
  """How to build, check and sample one task's network.

  Attributes:
    task: the training task whose runs this samples (`config.task`).
    model_type: the flax module class.
    resolve: model attributes from a config's `model` group (ConfigError for bad ones).
    abstract_params: the network's params tree as ShapeDtypeStructs (nothing computed).
    make_sampler: (model, tokenizer) -> a sampler with `sampling.Sampler`'s call signature.
  """
  task: str
  model_type: type
  resolve: Callable[[Mapping[str, Any]], dict[str, Any]]
  abstract_params: Callable[[Any], Any]
  make_sampler: Callable[[Any, Any], Any]

  def build(self, model_cfg: Mapping[str, Any], what: str) -> Any:
    """The network of a config's `model` group; ConfigError naming `what` for attributes that cannot build."""
    try:
      return self.model_type(**self.resolve(model_cfg))
    except errors.ConfigError as e:
      raise errors.ConfigError(f'{what}: {e}') from None


def _single_map_params(model: Any) -> Any:
  """Params of a network that reads one token map (NextToken, MaskGIT)."""
  label, idx = jnp.zeros((1,), jnp.int32), jnp.zeros((1, model.seq_len), jnp.int32)
  return nn.unbox(jax.eval_shape(model.init, jax.random.key(0), label, idx)['params'])


_ORDERINGS: dict[str, Ordering] = {
    'var': Ordering('var', var_lib.VAR, var_lib.resolve, var_weights.param_shapes, sampling.make_sampler),
    'next_token': Ordering('next_token', next_token_lib.NextToken, next_token_lib.resolve, _single_map_params,
                           next_token_sampling.Sampler),
    'maskgit': Ordering('maskgit', maskgit_lib.MaskGIT, maskgit_lib.resolve, _single_map_params,
                        maskgit_sampling.Sampler),
}


def register(ordering: Ordering) -> Ordering:
  """Adds (or replaces) the ordering of `ordering.task`."""
  _ORDERINGS[ordering.task] = ordering
  return ordering


def tasks() -> tuple[str, ...]:
  """The tasks whose runs can be sampled."""
  return tuple(_ORDERINGS)


def get(task: str, what: str = 'run') -> Ordering:
  """The ordering of task `task`; ConfigError naming the sampled tasks otherwise."""
  if task not in _ORDERINGS:
    raise errors.ConfigError(f'{what} trained task {task!r}; sampling needs one of {tasks()}')
  return _ORDERINGS[task]


def of_model(model: Any) -> Ordering:
  """The ordering whose network `model` is (an official VAR, or any registered network)."""
  for ordering in _ORDERINGS.values():
    if type(model) is ordering.model_type:  # pylint: disable=unidiomatic-typecheck  # subclasses are others
      return ordering
  raise errors.ConfigError(f'{type(model).__name__}: no registered ordering samples it; known: {tasks()}')
