"""The one flag set of the commands that load a model and sample (`var-sample`, `var-edit`, `var-evaluate`).

Where the model comes from: `--var` (an official VAR state dict) with `--tokenizer`, or `--workdir` (a training
run folder) with `--step`; how it samples: `--cfg`, `--top_k`, `--top_p` (and `--more_smooth` where a command
offers it) and `--seed`. `check` refuses bad values in one line before anything is loaded; `load` gives the
`var_jax.generate.generator.Generator`. Define them inside a command's `run()`.
"""
from __future__ import annotations

from typing import Any, Sequence

from absl import flags

from var_jax import errors
from var_jax.models import sampling


def define_source(*, tokenizer_help: str = 'Tokenizer folder or official .pth/.npz; required with --var, '
                  'overrides the run config otherwise.') -> None:
  flags.DEFINE_string('var', None, 'Official VAR state dict (.pth or .npz); needs --tokenizer.')
  flags.DEFINE_string('model_config', None, 'JSON of VAR attributes overriding what the --var state dict implies '
                      '(e.g. num_heads when attn_l2_norm is off).')
  flags.DEFINE_string('tokenizer', None, tokenizer_help)
  flags.DEFINE_string('workdir', None, 'Training run folder (var_jax.train.rundir: config.json + checkpoints/).')
  flags.DEFINE_integer('step', None, 'Checkpoint step of --workdir (default: the latest).')


def define_knobs(*, cfg: float = 1.5, top_k: int = 900, top_p: float = 0.96, seed_help: str = 'Sampling seed.',
                 more_smooth: str | None = None) -> None:
  """--cfg/--top_k/--top_p/--seed with these defaults (the official evaluation setting unless given), and
  --more_smooth when `more_smooth` (its help) is given."""
  flags.DEFINE_float('cfg', cfg, 'Classifier-free guidance (>= 0).')
  flags.DEFINE_integer('top_k', top_k, 'Top-k filtering (0 = off; capped at the vocabulary).')
  flags.DEFINE_float('top_p', top_p, 'Top-p filtering (0 = off).')
  flags.DEFINE_integer('seed', 0, seed_help)
  if more_smooth:
    flags.DEFINE_bool('more_smooth', False, more_smooth)


def check_knobs(f: Any) -> None:
  """ConfigError (one line) for --cfg, --top_k or --top_p out of range (NaN included)."""
  sampling.check_knobs(f.cfg, f.top_k, f.top_p, prefix='--')


def check(f: Any, *, others: Sequence[str] = ()) -> None:
  """ConfigError (one line) unless exactly one source is given (--var with --tokenizer, --workdir, or one of the
  command's `others`, e.g. 'images'), or for a knob out of range."""
  given = [name for name in (*others, 'var', 'workdir') if getattr(f, name)]
  if len(given) != 1:
    names = [f'--{name}' for name in others] + ['--var (with --tokenizer)', '--workdir']
    listed = ', '.join(names[:-1]) + f' or {names[-1]}'
    raise errors.ConfigError(f'give exactly one of {listed}')
  if f.var and not f.tokenizer:
    raise errors.ConfigError('--var needs --tokenizer')
  check_knobs(f)


def knobs(f: Any, generator: Any) -> dict[str, Any]:
  """The sampler's keyword arguments from the flags (top-k capped at the generator's vocabulary)."""
  return generator.knobs(cfg=f.cfg, top_k=f.top_k, top_p=f.top_p, more_smooth=getattr(f, 'more_smooth', False))


def load(f: Any):
  """The Generator the flags name (checked with `check` first)."""
  from var_jax.generate import generator  # pylint: disable=g-import-not-at-top  # jax, once the flags are checked
  return generator.load(var=f.var, tokenizer=f.tokenizer, workdir=f.workdir, step=f.step,
                        model_config=generator.parse_model_config(f.model_config))
