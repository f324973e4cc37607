"""`Generator`: a network, its params, its tokenizer and its sampler, for any registered ordering.

  gen = generator.load(workdir='runs/d4')                                   # a run folder's newest checkpoint
  gen = generator.load(var='var_d16.pth', tokenizer='vae_ch160v4096z32.pth')  # official weights
  driver = gen.driver(batch_size=16)                  # the data-parallel sampling driver (var_jax.eval.generate)
  tokens, images_uint8 = driver.draw(labels, indices, seed=0, **gen.knobs(cfg=1.5, top_k=900, top_p=0.96))

A run folder is read through its `RunDir`: the network from config.json (its `task` picks the ordering,
`var_jax.generate.orderings`), the params from its checkpoint, the tokenizer from the config's `tokenizer` group
(its `path`, or its seed) unless another is given. No training task and no optimizer is built.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, Mapping

from var_jax import errors
from var_jax.eval import generate as driver_lib
from var_jax.generate import orderings
from var_jax.train import checkpoint
from var_jax.train import config as config_lib
from var_jax.train import rundir as rundir_lib
from var_jax.weights import var as var_weights
from var_jax.weights import vqvae


@dataclasses.dataclass
class Generator:
  """What sampling needs. `source` says where it came from (for messages); `step` is a run's checkpoint step."""
  model: Any
  params: Any
  vae: Any
  vae_params: Any
  source: str
  step: int | None = None

  @functools.cached_property
  def ordering(self) -> orderings.Ordering:
    return orderings.of_model(self.model)

  @functools.cached_property
  def sampler(self) -> Any:
    """The compile-once sampler of the model's ordering (`sampler(params, vae_params, labels, key, **knobs)`)."""
    return self.ordering.make_sampler(self.model, self.vae)

  @property
  def num_classes(self) -> int:
    return self.model.num_classes

  def knobs(self, *, cfg: float, top_k: int, top_p: float, more_smooth: bool = False) -> dict[str, Any]:
    """The sampler's keyword arguments, top-k capped at the vocabulary."""
    return dict(cfg=cfg, top_k=min(top_k, self.model.vocab_size), top_p=top_p, more_smooth=more_smooth)

  def driver(self, batch_size: int, devices=None) -> driver_lib.DataParallelSampler:
    """The one sampling driver: batches split over this process's devices, per-sample keys."""
    return driver_lib.DataParallelSampler(self.sampler, self.params, self.vae_params, batch_size, devices)


def from_run(workdir: str | rundir_lib.RunDir, step: int | None = None, tokenizer: str | None = None) -> Generator:
  """The generator of a run folder's checkpoint `step` (default: the newest); `tokenizer` overrides the run's.

  ConfigError for a folder that is not a run, has no checkpoint or lacks `step`, or trained a task that is not
  sampled; WeightsError when the checkpoint does not fit the config's network.
  """
  run = rundir_lib.RunDir(workdir)
  cfg = config_lib.load_json(run.checked_config())
  ordering = orderings.get(cfg.get('task', config_lib.DEFAULT_TASK), what=f'--workdir={run.path}')
  model = ordering.build(cfg.model, f'{run.config}: model')
  params, step = checkpoint.restore_params(run, step)
  checkpoint.check_params(params, ordering.abstract_params(model), f'{run.checkpoints}/{step}')
  vae, vae_params = vqvae.load(tokenizer) if tokenizer else vqvae.from_config(cfg.tokenizer)
  return Generator(model, params, vae, vae_params, source=f'{run.path} step {step}', step=step)


def from_weights(var: str, tokenizer: str, model_config: Mapping[str, Any] | None = None) -> Generator:
  """The generator of an official VAR state dict (.pth/.npz; `model_config` overrides what it implies) and a
  tokenizer (folder or official .pth/.npz)."""
  model, params = var_weights.load(var, model_config)
  return Generator(model, params, *vqvae.load(tokenizer), source=var)


def load(*, var: str | None = None, tokenizer: str | None = None, workdir: str | None = None,
         step: int | None = None, model_config: Mapping[str, Any] | None = None) -> Generator:
  """From official weights (`var` with `tokenizer`) or from a run folder (`workdir`, optionally `step`)."""
  if bool(var) == bool(workdir):
    raise errors.ConfigError('give exactly one of --var (with --tokenizer) or --workdir')
  if var:
    if not tokenizer:
      raise errors.ConfigError('--var needs --tokenizer')
    return from_weights(var, tokenizer, model_config)
  return from_run(workdir, step, tokenizer)


def parse_model_config(text: str | None) -> dict[str, Any] | None:
  """--model_config's JSON of VAR attributes, or None; ConfigError for text that is not JSON."""
  if not text:
    return None
  try:
    return json.loads(text)
  except ValueError as e:
    raise errors.ConfigError(f'--model_config: not JSON ({e})') from None
