"""In-memory random token batches (`data.name = 'synthetic_tokens'`): no files, no TFDS, no grain.

Used by the benchmark and for engine tests that must not depend on a dataset. Each global batch is
a pure function of (seed, batch index), and a process takes its rows of it, so any number of
processes sees the same global batch and resuming needs only the batch index.
"""
from __future__ import annotations

import numpy as np


class SyntheticTokens:
  """Iterator of per-process `{'tokens': i32[b, L], 'label': i32[b]}` with get_state/set_state."""

  def __init__(self, *, global_batch_size: int, patch_nums, vocab_size: int, num_classes: int,
               seed: int, process_index: int = 0, process_count: int = 1):
    if global_batch_size % process_count:
      raise ValueError(f'synthetic_tokens: batch {global_batch_size} does not split over '
                       f'{process_count} processes')
    self._batch = global_batch_size
    self._seq_len = sum(p * p for p in patch_nums)
    self._vocab, self._classes, self._seed = vocab_size, num_classes, seed
    per_process = global_batch_size // process_count
    self._rows = slice(process_index * per_process, (process_index + 1) * per_process)
    self._index = 0

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self._seed, self._index])
    self._index += 1
    tokens = rng.integers(0, self._vocab, (self._batch, self._seq_len), dtype=np.int32)
    label = rng.integers(0, self._classes, (self._batch,), dtype=np.int32)
    return {'tokens': tokens[self._rows], 'label': label[self._rows]}

  def get_state(self) -> dict:
    return {'index': self._index}

  def set_state(self, state: dict) -> None:
    self._index = int(state['index'])
