"""grain input pipelines: one global order whatever the topology, seeded per-epoch shuffles, exact resume.

Pipeline (grain `MapDataset`, so every element is a pure function of (seed, global index) and the iterator
state is just a position):

  source -> shuffle (train) -> decode + preprocess -> repeat -> this process's rows of each global batch,
         stacked -> threads read batches ahead (`data.num_threads`, `data.prefetch`) [-> worker processes]

The global batch at step t is records [t * G, (t + 1) * G) of the shuffled, repeated stream (G the global
batch size): a function of the seed, the dataset and t alone. Process p of P reads rows [p * G / P, (p + 1) *
G / P) of it, which is what its devices hold under `jax.make_array_from_process_local_data` (processes own
consecutive rows of the data axis), and nothing else. Random crops and flips are keyed by the global index,
so by the record and the epoch, never by the process. The iterator's state is the number of global batches
read, so a checkpoint restores onto any process count. `repeat` folds the epoch into every random transform,
so each epoch is shuffled and cropped differently. Worker processes (`data.worker_count`) each build whole
batches, taken in turn, so they give the same batches as none. Images that are not RGB uint8 are converted;
tiny ones are dropped (counted and logged) and replaced by the next record of the global stream, so batches
stay full and the same on every topology.
"""
import threading
from typing import Any, Callable, Iterator

from absl import logging
import grain
import numpy as np

from var_jax import errors
from var_jax.data import config
from var_jax.data import preprocess
from var_jax.data import sources

_MAX_REPLACED = 64  # dropped records in a row before the loader gives up


class BadRecordCounter:
  """Counts records dropped or converted, across reader threads, and logs them.

  With `data.worker_count > 0` each worker process counts (and logs) its own records.
  """

  def __init__(self, where: str):
    self._where, self._lock, self.counts = where, threading.Lock(), {}

  def __getstate__(self):  # Worker processes get a copy with a fresh lock.
    return {'where': self._where, 'counts': dict(self.counts)}

  def __setstate__(self, state):
    self._where, self._lock, self.counts = state['where'], threading.Lock(), state['counts']

  def add(self, problem: str):
    with self._lock:
      self.counts[problem] = self.counts.get(problem, 0) + 1
      n = self.counts[problem]
    if n & (n - 1) == 0:  # Log the 1st, 2nd, 4th, 8th... occurrence: visible, but never a flood.
      logging.warning('data %s: a record is %s (%d so far; %s)', self._where, problem, n,
                      'skipped' if problem in preprocess.SKIPPED else 'converted to RGB')


class Loader(Iterator[dict[str, np.ndarray]]):
  """Iterator of per-process batch dicts, with a JSON-serialisable `get_state` / `set_state`.

  Attributes:
    num_records: records in this process's shard (before repeating).
    num_classes: number of labels of the dataset.
    bad_records: {problem: count} seen so far by this process (see `preprocess.SKIPPED` / `CONVERTED`).
  """

  def __init__(self, make_dataset: Callable[[int], grain.IterDataset], *, num_records: int, num_classes: int,
               counter: BadRecordCounter):
    self._make, self._batches = make_dataset, 0
    self._iter = iter(make_dataset(0))
    self.num_records, self.num_classes, self._counter = num_records, num_classes, counter

  @property
  def bad_records(self) -> dict[str, int]:
    return dict(self._counter.counts)

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._iter)
    self._batches += 1
    return batch

  def get_state(self) -> dict[str, Any]:
    """{'global_batches': n}: the same for every process, so it restores onto any process count."""
    return {'global_batches': self._batches}

  def set_state(self, state: dict[str, Any]) -> None:
    if 'global_batches' not in state:
      raise errors.DataError(f'data iterator state {sorted(state)} is from an older var_jax loader (per-process '
                             'shards); resume with that version or start a new --workdir')
    self.close()
    self._batches = int(state['global_batches'])
    self._iter = iter(self._make(self._batches))

  def close(self) -> None:
    """Stops worker processes, if any (they also stop when the loader is garbage-collected)."""
    if hasattr(self._iter, 'close'):
      self._iter.close()


def _image_fn(src: sources.Source, cfg: dict, counter: BadRecordCounter, train: bool):
  """(record, rng or None) -> {'image': float32 [R, R, 3], 'label': int32} or None for a bad record."""
  size, mid_ratio, min_side = int(cfg['image_size']), float(cfg['mid_ratio']), int(cfg['min_side'])

  def fn(record, rng=None):
    img, problem = preprocess.as_rgb(np.asarray(record[src.image_key]))
    if problem:
      counter.add(problem)
    if min(img.shape[:2]) < min_side:
      counter.add('tiny')
      return None
    if train:
      img = preprocess.train_image(img, size, rng, hflip=bool(cfg['hflip']), mid_ratio=mid_ratio)
    else:
      img = preprocess.eval_image(img, size, mid_ratio=mid_ratio)
    return {'image': img, 'label': np.int32(record[src.label_key])}
  return fn


def _tokens_fn(record):
  return {'tokens': np.asarray(record['tokens'], np.int32), 'label': np.int32(record['label'])}


def make_loader(data_cfg, *, split: str, global_batch_size: int, seed: int, train: bool,
                process_index: int | None = None, process_count: int | None = None,
                tokenizer_fingerprint: str | None = None, num_epochs: int | None = None) -> Loader:
  """Builds the input iterator of one process.

  Args:
    data_cfg: the `data` ConfigDict (see `var_jax.data.config.default_config`).
    split: split to read, e.g. data.train_split or data.eval_split.
    global_batch_size: batch size over all processes; each process yields global / process_count.
    seed: drives the shuffle and the random crops / flips (train only); same seed, same batches.
    train: random crop (+ optional flip) and shuffling if True; centre crop and file order if False.
    process_index, process_count: this process's shard; default `jax.process_index()` / `process_count()`.
    tokenizer_fingerprint: `var_jax.weights.state_dict.fingerprint(tokenizer_params)` of the run; required when
      data.name == 'tokens', whose dataset must have been made by the same tokenizer.
    num_epochs: passes over the shard; None repeats forever.

  Returns:
    A `Loader` of {'image': float32 [B, R, R, 3] in [-1, 1], 'label': int32 [B]} or
    {'tokens': int32 [B, L], 'label': int32 [B]} with B = global_batch_size // process_count.
  """
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top  # Only when the caller did not say which process it is.
    process_index, process_count = jax.process_index(), jax.process_count()
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise errors.ConfigError(f'batch_size: global batch {global_batch_size} must be a positive multiple of the '
                     f'{process_count} processes')
  if not 0 <= process_index < process_count:
    raise errors.ConfigError(f'process_index {process_index} not in [0, {process_count})')
  batch_size = global_batch_size // process_count
  cfg = {k: config.option(data_cfg, k) for k in ('num_threads', 'prefetch', 'worker_count', 'hflip',
                                                   'image_size', 'mid_ratio', 'min_side')}
  src = sources.open_source(data_cfg, split, tokenizer_fingerprint=tokenizer_fingerprint)
  if len(src.records) < process_count:
    raise errors.DataError(f'{src.where} split {split!r} has {len(src.records)} records, fewer than the '
                     f'{process_count} processes reading it')
  counter = BadRecordCounter(src.where)

  ds = grain.MapDataset.source(src.records).seed(seed)
  num_records = len(ds) // process_count
  if train:
    ds = ds.shuffle()
  if src.kind == 'tokens':
    ds = ds.map(_tokens_fn)
  elif train:
    ds = ds.random_map(_image_fn(src, cfg, counter, train=True))
  else:
    ds = ds.map(_image_fn(src, cfg, counter, train=False))
  ds = ds.repeat(num_epochs)
  read = grain.ReadOptions(num_threads=int(cfg['num_threads']),
                           prefetch_buffer_size=max(1, int(cfg['prefetch']), int(cfg['num_threads'])))

  def make(start_batch: int) -> grain.IterDataset:
    batches = LocalBatches(ds, global_batch=global_batch_size, rows=batch_size, offset=process_index * batch_size,
                           start_batch=start_batch)
    out = batches.to_iter_dataset(read)  # workers (below) take whole batches in turn: the same order
    if int(cfg['worker_count']) > 0:
      out = out.mp_prefetch(grain.MultiprocessingOptions(
          num_workers=int(cfg['worker_count']), per_worker_buffer_size=max(1, int(cfg['prefetch']))))
    return out

  logging.info('data %s split %r: process %d/%d reads rows %d..%d of each global batch of %d, %s', src.where,
               split, process_index, process_count, process_index * batch_size, (process_index + 1) * batch_size,
               global_batch_size, 'train' if train else 'eval')
  return Loader(make, num_records=num_records, num_classes=src.num_classes, counter=counter)


class LocalBatches(grain.MapDataset):
  """Element t: this process's rows [offset, offset + rows) of global batch start_batch + t, stacked.

  Global batch t is elements [t * global_batch, (t + 1) * global_batch) of `parent`; an incomplete last one is
  left out. An element that is None (a dropped record) is replaced by the next one of `parent`, so batches
  stay full and the replacement is a function of the global index alone.
  """

  def __init__(self, parent: grain.MapDataset, *, global_batch: int, rows: int, offset: int, start_batch: int):
    super().__init__(parent)
    self._global, self._rows, self._offset, self._start = global_batch, rows, offset, start_batch
    self._length = max(0, len(parent) // global_batch - start_batch)

  def __len__(self) -> int:
    return self._length

  def _record(self, index: int):
    for k in range(_MAX_REPLACED):
      record = self._parent[(index + k) % len(self._parent)]
      if record is not None:
        return record
    raise errors.DataError(f'{_MAX_REPLACED} records in a row were dropped (see the warnings above)')

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    first = (self._start + index) * self._global + self._offset
    records = [self._record(first + r) for r in range(self._rows)]
    return {k: np.stack([r[k] for r in records]) for k in records[0]}

  def __str__(self) -> str:
    return f'LocalBatches(rows {self._offset}..{self._offset + self._rows} of {self._global}, from {self._start})'
