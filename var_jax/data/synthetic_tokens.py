"""In-memory random token batches (`data.name = 'synthetic_tokens'`): no files, no TFDS, no grain.

Used by the benchmark and for engine tests that must not depend on a dataset. Each global batch is a pure
function of (seed, batch index), and a process takes its rows of it, so any number of processes sees the same
global batch and resuming needs only the batch index.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from var_jax import errors


@dataclasses.dataclass(frozen=True)
class TokenSpec:
  """What the model reads: token sequences of `seq_len` over `vocab_size`, labels in [0, num_classes)."""
  seq_len: int
  vocab_size: int
  num_classes: int


class SyntheticTokens:
  """Iterator of per-process `{'tokens': i32[b, L], 'label': i32[b]}` with get_state/set_state."""

  def __init__(self, spec: TokenSpec, *, global_batch_size: int, seed: int, process_index: int = 0,
               process_count: int = 1):
    if global_batch_size % process_count:
      raise errors.ConfigError(f'synthetic_tokens: batch {global_batch_size} does not split over '
                               f'{process_count} processes')
    self._spec, self._batch, self._seed = spec, global_batch_size, seed
    per_process = global_batch_size // process_count
    self._rows = slice(process_index * per_process, (process_index + 1) * per_process)
    self._index = 0

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self._seed, self._index])
    self._index += 1
    s = self._spec
    tokens = rng.integers(0, s.vocab_size, (self._batch, s.seq_len), dtype=np.int32)
    label = rng.integers(0, s.num_classes, (self._batch,), dtype=np.int32)
    return {'tokens': tokens[self._rows], 'label': label[self._rows]}

  def get_state(self) -> dict:
    return {'index': self._index}

  def set_state(self, state: dict) -> None:
    self._index = int(state['index'])


def make_loader(token_spec: TokenSpec | None, *, global_batch_size: int, seed: int, train: bool,
                process_index: int, process_count: int) -> SyntheticTokens:
  """The loader of `data.name = 'synthetic_tokens'`: train and eval draw from different seeds."""
  if token_spec is None:
    raise errors.ConfigError('data.name=synthetic_tokens: this task reads images, not tokens')
  return SyntheticTokens(token_spec, global_batch_size=global_batch_size, seed=seed + (0 if train else 1),
                         process_index=process_index, process_count=process_count)
