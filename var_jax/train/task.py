"""The task interface: what the engine trains. Each task is one module under `var_jax.train.tasks`.

A task says what is trained, and nothing about devices: its config defaults and checks, its parameters (with
logical axis names where they are sharded), its optimizer, its pure train and eval steps, its batches, its
size and FLOP count, and what it exports at the end. `var_jax.train.engine.Engine` compiles any task's steps
over a mesh with explicit shardings and a donated `TrainState`; `var_jax.train.loop` drives the engine and
knows no task by name.

FLOP convention, the same for every task: training FLOPs are 3 x the forward pass's matmul and convolution
FLOPs (2 per multiply-add), counted from the model's shapes (not by XLA), over the model being trained; work
on frozen inputs (VAR's tokenizer encoding, a perceptual network) is left out.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar, Iterator, NamedTuple

import flax.linen as nn
import jax
import ml_collections
import optax
from jax.sharding import PartitionSpec

from var_jax.train import state as state_lib

Batch = dict[str, Any]
Metrics = dict[str, jax.Array]


class Start(NamedTuple):
  """A run's starting point: host params, and what they are (JSON, the run's init.json) where that is known."""
  params: Any
  record: dict[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class Sizes:
  """A configuration's size, from its config alone (no devices, no weights).

  Attributes:
    params: trainable parameters.
    params_nonembed: parameters outside lookup tables (Kaplan's N).
    tokens_per_example: tokens (or token-map positions) one training example carries.
    flops_per_example: training FLOPs per example (see the module docstring).
  """
  params: int
  params_nonembed: int
  tokens_per_example: int
  flops_per_example: float


def gradient_step(state: state_lib.TrainState, loss_fn, tx: optax.GradientTransformation,
                  lr_fn: optax.Schedule) -> tuple[state_lib.TrainState, Metrics]:
  """One optimizer update of `state.params` by the gradient of `loss_fn(params) -> (loss, metrics)`; returns
  (new state, metrics + grad_norm and lr), the metrics every task's train step reports."""
  (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(metrics, grad_norm=optax.tree.norm(grads), lr=lr_fn(state.step))
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


class Task(abc.ABC):
  """What the engine trains; one instance per resolved config. Subclasses set `name` and register it."""

  name: ClassVar[str]
  console_keys: ClassVar[tuple[str, ...]] = ('loss', 'lr', 'grad_norm')  # on the console's step line
  summary_keys: ClassVar[tuple[str, ...]] = ('loss',)  # final eval metrics copied into DONE as eval_<key>

  # ---- configuration (class methods: no devices, no weights) ---------------------------------------

  @classmethod
  @abc.abstractmethod
  def default_config(cls) -> ml_collections.ConfigDict:
    """The task's own groups, and its overrides of the common defaults (`var_jax.train.config`)."""

  @classmethod
  def resolve(cls, c: ml_collections.ConfigDict) -> None:
    """Checks the task's keys and fills its derived values, in place; raises errors.ConfigError."""

  @classmethod
  @abc.abstractmethod
  def sizes(cls, c: ml_collections.ConfigDict) -> Sizes:
    """Parameter, token and FLOP counts of a resolved config."""

  @classmethod
  def columns(cls, c: ml_collections.ConfigDict) -> dict[str, Any]:
    """Task-specific columns of a sweep's results table (e.g. depth, width, heads), even for a config that
    does not resolve (the run's error column then says why)."""
    del c
    return {}

  @classmethod
  def run_prefix(cls, c: ml_collections.ConfigDict) -> str:
    """A readable prefix for a sweep's run ids."""
    del c
    return cls.name

  # ---- state ---------------------------------------------------------------------------------------

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    boxed = jax.eval_shape(self.init_params, jax.random.key(0))
    self.logical_specs = nn.get_partition_spec(boxed)
    self.abstract_params = nn.meta.unbox(boxed)
    self.tx = self.make_optimizer()

  @abc.abstractmethod
  def init_params(self, key: jax.Array, start: Any = None) -> Any:
    """Fresh params, or the run's starting point `start` (see `start_params`) with fresh values where it
    has none. Fresh leaves that are sharded carry logical axis names (`nn.with_logical_partitioning`)."""

  def start_params(self) -> Start | None:
    """Where to start instead of a fresh init (fine-tuning), or None. The loop records `Start.record` in the
    run's init.json and DONE."""
    return None

  def make_optimizer(self) -> optax.GradientTransformation:
    return state_lib.make_optimizer(self.config.optim, self.config.optim.total_steps, self.logical_specs)

  def init_opt_state(self, params: Any) -> Any:
    return self.tx.init(params)

  def frozen(self) -> Any:
    """Host arrays the steps read but never train (a tokenizer, a perceptual network); never checkpointed."""
    return {}

  def init_state(self, key: jax.Array, frozen: Any, start: Any = None) -> state_lib.TrainState:
    params = nn.meta.unbox(self.init_params(key, start))
    return state_lib.TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params,
                                opt_state=self.init_opt_state(params), frozen=frozen)

  def state_logical_specs(self, frozen: Any) -> state_lib.TrainState:
    """Logical PartitionSpecs of the whole state: optimizer moments follow their parameter."""
    abstract_opt = jax.eval_shape(self.init_opt_state, self.abstract_params)
    opt_specs = optax.tree_map_params(
        self.tx, lambda _, spec: spec, abstract_opt, self.logical_specs,
        transform_non_params=lambda _: PartitionSpec(), is_leaf=lambda x: isinstance(x, PartitionSpec))
    return state_lib.TrainState(step=PartitionSpec(), params=self.logical_specs, opt_state=opt_specs,
                                frozen=jax.tree.map(lambda _: PartitionSpec(), frozen))

  # ---- steps (pure; the engine jits them) ----------------------------------------------------------

  @abc.abstractmethod
  def train_step(self, state: state_lib.TrainState, batch: Batch,
                 rng: jax.Array) -> tuple[state_lib.TrainState, Metrics]:
    """One update on a global batch; per-step randomness from `fold_in(rng, state.step)`.

    Metrics must include `loss`, `grad_norm` and `lr` (the loop stops on a non-finite loss or norm).
    """

  @abc.abstractmethod
  def eval_step(self, state: state_lib.TrainState, batch: Batch) -> Metrics:
    """Scalar metrics of the current params on a global eval batch (averaged over batches by the loop)."""

  # ---- data and outputs ----------------------------------------------------------------------------

  def loader_kwargs(self) -> dict[str, Any]:
    """Extra arguments of `var_jax.data.make_loader` (e.g. what synthetic tokens look like)."""
    return {}

  def batches(self, split: str, *, process_index: int, process_count: int) -> Iterator[Batch]:
    """This process's batches of 'train' or 'eval', as an iterator with get_state/set_state."""
    from var_jax import data  # pylint: disable=g-import-not-at-top
    c, train = self.config, split == 'train'
    return data.make_loader(
        c.data, split=c.data.train_split if train else c.data.eval_split,
        global_batch_size=c.batch_size if train else c.eval.batch_size, seed=c.seed, train=train,
        process_index=process_index, process_count=process_count, **self.loader_kwargs())

  def describe(self) -> dict[str, Any]:
    """What DONE records as the model (JSON-serialisable)."""
    return {}

  def finish(self, state: state_lib.TrainState, workdir: str) -> dict[str, Any]:
    """End-of-training outputs (exports, pictures); returns what DONE records of them."""
    del state, workdir
    return {}
