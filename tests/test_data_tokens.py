"""Token datasets: layout, read-back, resume after interruption, sharding, and refusing another tokenizer.

The tokenizer here is a stand-in (area means of the red channel, quantised), so these tests need no model;
`test_tokenize.py` runs the real VQVAE end to end.
"""
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from var_jax import data
from var_jax.data import preprocess
from var_jax.data import sources
from var_jax.data import tokens

PATCH_NUMS = (1, 2, 4)
L = sum(p * p for p in PATCH_NUMS)
VOCAB = 300
R = 16


def fake_encode(img_BHWC: np.ndarray) -> np.ndarray:
  """float32 [B, R, R, 3] -> int [B, L]: per scale, block means of channel 0 quantised to VOCAB levels."""
  out = []
  for p in PATCH_NUMS:
    blocks = img_BHWC[..., 0].reshape(len(img_BHWC), p, R // p, p, R // p).mean(axis=(2, 4))
    out.append(np.round((blocks + 1) / 2 * (VOCAB - 1)).astype(np.int64).reshape(len(img_BHWC), -1))
  return np.concatenate(out, axis=1)


class CountingEncoder:

  def __init__(self, fail_after=None):
    self.calls, self.fail_after = 0, fail_after

  def __call__(self, img_BHWC):
    if self.fail_after is not None and self.calls >= self.fail_after:
      raise KeyboardInterrupt('simulated interruption')
    self.calls += 1
    return fake_encode(img_BHWC)


@pytest.fixture(scope='module')
def src(tmp_path_factory):
  c = data.default_config()
  c.data_dir, c.image_size, c.num_train, c.num_eval = str(tmp_path_factory.mktemp('tfds')), R, 20, 4
  return sources.open_source(c, 'train')


def _write(out, src, **kw):
  args = dict(encode_fn=fake_encode, fingerprint='tok-A', patch_nums=PATCH_NUMS, vocab_size=VOCAB, image_size=R,
              num_classes=src.num_classes, source='test', batch_size=4, chunk_size=8, progress=False)
  args.update(kw)
  return tokens.write_split(str(out), 'train', src.records, **args)


def _all_records(out, split='train'):
  ds = tfds.builder_from_directory(str(out)).as_data_source(split)
  return {(int(r['index']), int(r['aug'])): (r['tokens'], int(r['label'])) for r in (ds[i] for i in range(len(ds)))}


@pytest.fixture(scope='module')
def flipped(src, tmp_path_factory):
  out = tmp_path_factory.mktemp('tok') / 'flipped'
  _write(out, src, num_crops=2, flip=True)
  return out


def test_read_back_equals_encoding_on_the_fly(src, flipped):
  recs = _all_records(flipped)
  assert sorted(recs) == [(i, a) for i in range(20) for a in range(4)]  # 2 crops x 2 flips per image.
  for i in (0, 7, 19):
    img = src.records[i]['image']
    centre = preprocess.eval_image(img, R)
    np.testing.assert_array_equal(recs[(i, 0)][0], fake_encode(centre[None])[0])
    np.testing.assert_array_equal(recs[(i, 1)][0], fake_encode(centre[None, :, ::-1])[0])
    assert recs[(i, 0)][1] == int(src.records[i]['label'])
  # Random crop k=1 of image i and its mirror are the same crop.
  rng = np.random.default_rng([0, 7, 1])
  crop = preprocess.crop_variant(src.records[7]['image'], R, 1, False, rng)
  np.testing.assert_array_equal(recs[(7, 2)][0], fake_encode(crop[None])[0])
  np.testing.assert_array_equal(recs[(7, 3)][0], fake_encode(crop[None, :, ::-1])[0])


def test_layout_is_a_tfds_array_record_dataset_with_uint16_tokens(flipped):
  names = sorted(os.listdir(flipped))
  assert [n for n in names if 'array_record' in n] == [
      'tokens-train.array_record-00000-of-00003', 'tokens-train.array_record-00001-of-00003',
      'tokens-train.array_record-00002-of-00003']
  builder = tfds.builder_from_directory(str(flipped))
  assert builder.info.splits['train'].num_examples == 80
  assert builder.info.metadata['fingerprint'] == 'tok-A'
  assert list(builder.info.metadata['patch_nums']) == list(PATCH_NUMS)
  assert builder.as_data_source('train')[0]['tokens'].dtype == np.uint16


def test_loader_feeds_tokens_like_images(flipped):
  cfg = data.default_config()
  cfg.name, cfg.path = 'tokens', str(flipped)
  loader = data.make_loader(cfg, split='train', global_batch_size=8, seed=0, train=True, process_index=1,
                            process_count=2, tokenizer_fingerprint='tok-A')
  batch = next(loader)
  assert set(batch) == {'tokens', 'label'}
  assert batch['tokens'].shape == (4, L) and batch['tokens'].dtype == np.int32
  assert batch['label'].shape == (4,) and batch['label'].dtype == np.int32
  assert batch['tokens'].max() < VOCAB


def test_a_different_tokenizer_is_refused(flipped):
  cfg = data.default_config()
  cfg.name, cfg.path = 'tokens', str(flipped)
  kw = dict(split='train', global_batch_size=2, seed=0, train=True, process_index=0, process_count=1)
  with pytest.raises(ValueError, match="made by tokenizer tok-A, but this run's tokenizer is tok-B"):
    data.make_loader(cfg, tokenizer_fingerprint='tok-B', **kw)
  with pytest.raises(ValueError, match='needs tokenizer_fingerprint='):
    data.make_loader(cfg, **kw)
  with pytest.raises(ValueError, match=r"split 'validation' not in token dataset"):
    data.make_loader(cfg, tokenizer_fingerprint='tok-A', **dict(kw, split='validation'))


def test_interrupted_run_resumes_to_the_same_dataset(src, tmp_path, flipped):
  out = tmp_path / 'resumed'
  with pytest.raises(KeyboardInterrupt):
    _write(out, src, num_crops=2, flip=True, encode_fn=CountingEncoder(fail_after=9))  # Dies in chunk 1.
  with pytest.raises(ValueError, match='is unfinished'):
    tokens.read_info(str(out))
  assert [n for n in os.listdir(out) if 'array_record' in n] == ['tokens-train.array_record-00000-of-00003']
  enc = CountingEncoder()
  counts = _write(out, src, num_crops=2, flip=True, encode_fn=enc)
  assert counts['skipped_chunks'] == 1 and enc.calls == 12  # Chunks 1 and 2: 12 images x 4 augs, 4 a call.
  assert _all_records(out).keys() == _all_records(flipped).keys()
  for key, (toks, label) in _all_records(flipped).items():
    np.testing.assert_array_equal(_all_records(out)[key][0], toks)


def test_processes_split_the_chunks_and_together_write_everything(src, tmp_path):
  out = tmp_path / 'sharded'
  first = _write(out, src, process_index=0, process_count=2)
  assert first['images'] == 12  # Chunks 0 and 2: 8 + 4 images.
  with pytest.raises(ValueError, match='is unfinished'):
    tokens.read_info(str(out))
  second = _write(out, src, process_index=1, process_count=2)
  assert second['images'] == 8
  single = tmp_path / 'single'
  _write(single, src)
  a, b = _all_records(out), _all_records(single)
  assert a.keys() == b.keys() == {(i, 0) for i in range(20)}
  assert all(np.array_equal(a[k][0], b[k][0]) for k in a)


def test_resuming_with_other_settings_is_refused(src, tmp_path):
  out = tmp_path / 'mixed'
  _write(out, src, process_index=0, process_count=2)
  with pytest.raises(ValueError, match=r"started with fingerprint='tok-A', this run has fingerprint='tok-B'"):
    _write(out, src, process_index=1, process_count=2, fingerprint='tok-B')


def test_missing_token_dataset_says_how_to_make_one(tmp_path):
  with pytest.raises(ValueError, match='holds no token dataset; write one there with python -m var_jax.tokenize'):
    tokens.read_info(str(tmp_path / 'none'))
