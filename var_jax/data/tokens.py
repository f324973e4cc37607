"""Pre-tokenized datasets: multi-scale token indices of a dataset split, stored as a TFDS ArrayRecord dataset.

Layout of OUT (a TFDS dataset directory named 'tokens', readable with `tfds.builder_from_directory(OUT)`):

  tokens-<split>.array_record-<chunk>-of-<n>   one file per chunk of `chunk_size` source images
  tokenize-<split>.json                        the settings of the run writing <split> (for resuming)
  dataset_info.json, features.json, ...        written once every chunk of a split exists

Records: {'tokens': uint16 [L] (int32 when the vocab exceeds 65536; scales concatenated, L = sum pn^2),
'label', 'index' (source record), 'aug' (crop * 2 + flip)}. Each augmentation (crop, flip) of an image is a
record of its own. The metadata carries the tokenizer's `fingerprint`, `patch_nums`, `vocab_size`,
`image_size` and `num_classes`; a run whose tokenizer has another fingerprint is refused.

Writing is resumable (a chunk is written to a temporary name and renamed when complete; finished chunks are
skipped) and sharded over processes (chunk c belongs to process c % process_count).
"""
import collections
import json
import math
import os
from typing import Any, Callable, Sequence

from absl import logging
from array_record.python import array_record_module
import numpy as np
import tensorflow_datasets as tfds
import tqdm

from var_jax import errors
from var_jax.data import preprocess

FILE_TEMPLATE = '{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}'
_PARTIAL_DIR = '.partial'


def token_dtype(vocab_size: int) -> np.dtype:
  return np.dtype(np.uint16 if vocab_size <= 65536 else np.int32)


def features(seq_len: int, vocab_size: int, num_classes: int) -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      'tokens': tfds.features.Tensor(shape=(seq_len,), dtype=token_dtype(vocab_size),
                                     encoding=tfds.features.Encoding.BYTES),
      'label': tfds.features.ClassLabel(num_classes=num_classes),
      'index': np.int64,
      'aug': np.int32,
  })


def _chunk_name(split: str, chunk: int, num_chunks: int) -> str:
  return f'tokens-{split}.array_record-{chunk:05d}-of-{num_chunks:05d}'


def _spec_path(out_dir: str, split: str) -> str:
  return os.path.join(out_dir, f'tokenize-{split}.json')


def _write_json_atomic(path: str, obj: Any) -> None:
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=1, sort_keys=True)
  os.replace(tmp, path)


def _check_or_write_spec(out_dir: str, split: str, spec: dict) -> None:
  """Refuses to resume a split that was started with other settings (tokenizer, crops, ...)."""
  path = _spec_path(out_dir, split)
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    diff = [k for k in sorted(set(old) | set(spec)) if old.get(k) != spec.get(k)]
    if diff:
      k = diff[0]
      raise errors.DataError(f'{path}: split {split!r} was started with {k}={old.get(k)!r}, this run has '
                       f'{k}={spec.get(k)!r}; use another --out or delete that directory')
  else:
    _write_json_atomic(path, spec)


def _variants(img_HWC: np.ndarray, index: int, spec: dict) -> list[tuple[int, np.ndarray]]:
  """[(aug id, float32 [R, R, 3])] for every (crop, flip) of one image; random crops seeded by index."""
  out = []
  for crop in range(spec['num_crops']):
    for flip in ((False, True) if spec['flip'] else (False,)):
      rng = np.random.default_rng([spec['seed'], index, crop])  # Same crop for its flipped twin.
      out.append((crop * 2 + int(flip), preprocess.crop_variant(img_HWC, spec['image_size'], crop, flip, rng,
                                                                mid_ratio=spec['mid_ratio'])))
  return out


class _Encoder:
  """Feeds fixed-size batches to `encode_fn` (padding the last one, so it compiles once)."""

  def __init__(self, encode_fn: Callable[[np.ndarray], np.ndarray], batch_size: int, dtype: np.dtype):
    self._fn, self._batch_size, self._dtype = encode_fn, batch_size, dtype

  def __call__(self, imgs: list[np.ndarray]) -> np.ndarray:
    out = []
    for start in range(0, len(imgs), self._batch_size):
      batch = np.stack(imgs[start:start + self._batch_size])
      n = len(batch)
      if n < self._batch_size:
        batch = np.concatenate([batch, np.zeros((self._batch_size - n,) + batch.shape[1:], batch.dtype)])
      out.append(np.asarray(self._fn(batch))[:n].astype(self._dtype))
    return np.concatenate(out)


def _write_chunk(path: str, records: Sequence[dict], feats) -> None:
  tmp_dir = os.path.join(os.path.dirname(path), _PARTIAL_DIR)
  os.makedirs(tmp_dir, exist_ok=True)
  tmp = os.path.join(tmp_dir, f'{os.path.basename(path)}.{os.getpid()}')
  writer = array_record_module.ArrayRecordWriter(tmp, 'group_size:1')
  for r in records:
    writer.write(feats.serialize_example(r))
  writer.close()
  os.replace(tmp, path)  # Only complete chunks ever carry the final name.


def _num_records(path: str) -> int:
  reader = array_record_module.ArrayRecordReader(path)
  try:
    return reader.num_records()
  finally:
    reader.close()


def _finalize(out_dir: str) -> list[str]:
  """Writes the TFDS metadata covering every split whose chunks are all present; returns those splits."""
  split_infos, meta = [], None
  for name in sorted(os.listdir(out_dir)):
    if not (name.startswith('tokenize-') and name.endswith('.json')):
      continue
    with open(os.path.join(out_dir, name)) as f:
      spec = json.load(f)
    paths = [os.path.join(out_dir, _chunk_name(spec['split'], c, spec['num_chunks']))
             for c in range(spec['num_chunks'])]
    if not all(os.path.exists(p) for p in paths):
      continue
    split_infos.append(tfds.core.SplitInfo(name=spec['split'], shard_lengths=[_num_records(p) for p in paths],
                                           num_bytes=sum(os.path.getsize(p) for p in paths),
                                           filename_template=None))
    meta = meta or {k: spec[k] for k in ('fingerprint', 'patch_nums', 'vocab_size', 'image_size', 'num_classes')}
    meta.setdefault('splits', {})[spec['split']] = spec
  if split_infos:
    tfds.folder_dataset.write_metadata(
        data_dir=out_dir, features=features(sum(p * p for p in meta['patch_nums']), meta['vocab_size'],
                                            meta['num_classes']),
        split_infos=split_infos, filename_template=FILE_TEMPLATE, check_data=False,
        description='Multi-scale VAR token indices written by var_jax.tokenize.',
        metadata=tfds.core.MetadataDict(meta))
  return [s.name for s in split_infos]


def write_split(out_dir: str, split: str, records: Sequence[dict[str, Any]], *,
                encode_fn: Callable[[np.ndarray], np.ndarray], fingerprint: str, patch_nums: Sequence[int],
                vocab_size: int, image_size: int, num_classes: int, source: str, image_key: str = 'image',
                label_key: str = 'label', num_crops: int = 1, flip: bool = False, seed: int = 0,
                mid_ratio: float = preprocess.MID_RATIO, min_side: int = preprocess.MIN_SIDE,
                batch_size: int = 64, chunk_size: int = 1024, process_index: int = 0, process_count: int = 1,
                progress: bool = True) -> dict[str, int]:
  """Tokenizes this process's share of a split into OUT, skipping chunks already written.

  Args:
    out_dir: the token dataset directory (created if needed).
    split: name the split gets in the token dataset.
    records: random-access source records holding a uint8 image and a label (e.g. `sources.Source.records`).
    encode_fn: float32 [B, R, R, 3] in [-1, 1] -> int [B, L] token indices, scales concatenated.
    fingerprint, patch_nums, vocab_size: the tokenizer's identity and token layout.
    image_size: R. num_classes: labels of the source. source: where the images came from (kept in metadata).
    num_crops: crop 0 is the centre crop, crops 1.. are random crops seeded by (seed, index, crop).
    flip: also store every crop mirrored.
    batch_size: images per `encode_fn` call (the last is padded). chunk_size: source images per file.
    process_index, process_count: this process's share (chunk c goes to process c % process_count).
  Returns:
    Counts for this process: {'images', 'records', 'skipped_chunks', and any bad-input problems}.
  """
  if num_crops < 1:
    raise errors.DataError(f'num_crops must be >= 1, got {num_crops}')
  os.makedirs(out_dir, exist_ok=True)
  num_source = len(records)
  if num_source == 0:
    raise errors.DataError(f'{source} split {split!r} is empty; nothing to tokenize')
  num_chunks = math.ceil(num_source / chunk_size)
  spec = dict(split=split, fingerprint=fingerprint, patch_nums=list(patch_nums), vocab_size=int(vocab_size),
              image_size=int(image_size), num_classes=int(num_classes), source=source, num_source=num_source,
              num_crops=int(num_crops), flip=bool(flip), seed=int(seed), mid_ratio=float(mid_ratio),
              chunk_size=int(chunk_size), num_chunks=num_chunks)
  _check_or_write_spec(out_dir, split, spec)
  feats = features(sum(p * p for p in patch_nums), vocab_size, num_classes)
  encode = _Encoder(encode_fn, batch_size, token_dtype(vocab_size))
  mine = [c for c in range(process_index, num_chunks, process_count)]
  todo = [c for c in mine if not os.path.exists(os.path.join(out_dir, _chunk_name(split, c, num_chunks)))]
  counts = collections.Counter(skipped_chunks=len(mine) - len(todo))
  total = sum(min(chunk_size, num_source - c * chunk_size) for c in todo)
  with tqdm.tqdm(total=total, desc=f'tokenize {split} (process {process_index})', unit='img',
                 disable=not progress) as bar:
    for c in todo:
      imgs, meta = [], []
      for index in range(c * chunk_size, min((c + 1) * chunk_size, num_source)):
        record = records[index]
        img, problem = preprocess.as_rgb(np.asarray(record[image_key]))
        if problem:
          counts[problem] += 1
        if min(img.shape[:2]) < min_side:
          counts['tiny'] += 1
        else:
          for aug, variant in _variants(img, index, spec):
            imgs.append(variant)
            meta.append((int(record[label_key]), index, aug))
          counts['images'] += 1
        bar.update(1)
      toks = encode(imgs) if imgs else np.zeros((0, 0))
      out = [{'tokens': t, 'label': label, 'index': index, 'aug': aug} for t, (label, index, aug) in zip(toks, meta)]
      _write_chunk(os.path.join(out_dir, _chunk_name(split, c, num_chunks)), out, feats)
      counts['records'] += len(out)
  bad = {k: v for k, v in counts.items() if k in preprocess.SKIPPED + preprocess.CONVERTED}
  logging.info('tokenize %s: process %d wrote %d records from %d images (%d chunks already done); bad input %s',
               split, process_index, counts['records'], counts['images'], counts['skipped_chunks'], bad or 'none')
  if split in _finalize(out_dir):
    logging.info('tokenize: split %r of %s is complete', split, out_dir)
  return dict(counts)


def read_info(path: str) -> dict[str, Any]:
  """The metadata of a finished token dataset (fingerprint, patch_nums, vocab_size, ..., splits)."""
  if not os.path.exists(os.path.join(path, 'dataset_info.json')):
    started = sorted(n for n in os.listdir(path) if n.startswith('tokenize-')) if os.path.isdir(path) else []
    if started:
      raise errors.DataError(f'data.path: token dataset {path!r} is unfinished ({", ".join(started)} started); run '
                       'var_jax.tokenize again with the same --out to finish it')
    raise errors.DataError(f'data.path: {path!r} holds no token dataset; write one there with '
                     f'python -m var_jax.tokenize --config=... --out={path}')
  return dict(tfds.builder_from_directory(path).info.metadata)


def open_split(path: str, split: str, *, tokenizer_fingerprint: str | None) -> tuple[Sequence[dict], dict]:
  """Opens one split of a token dataset, refusing one made by another tokenizer; -> (records, metadata)."""
  info = read_info(path)
  if tokenizer_fingerprint is None:
    raise errors.DataError('make_loader: data.name=tokens needs tokenizer_fingerprint='
                     'var_jax.weights.state_dict.fingerprint(tokenizer_params) of this run, to check the token dataset')
  if info['fingerprint'] != tokenizer_fingerprint:
    raise errors.DataError(f'data.path: token dataset {path!r} was made by tokenizer {info["fingerprint"]}, but this '
                     f'run\'s tokenizer is {tokenizer_fingerprint}; tokenize again with this tokenizer or set '
                     'tokenizer.path to the one that made it')
  if split not in info['splits']:
    raise errors.DataError(f'split {split!r} not in token dataset {path!r} (it has {sorted(info["splits"])}); set '
                     'data.train_split / data.eval_split or tokenize that split')
  return tfds.builder_from_directory(path).as_data_source(split), info
