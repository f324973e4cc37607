"""grain loader: batch contract, determinism, per-epoch shuffles, disjoint covering shards, exact resume.

With mid_ratio 1.0 the 'resize' is the identity and the random crop is the whole image, so every train image
is exactly one stored record and records can be told apart by their pixels.
"""
import json

from absl import flags
import ml_collections
import numpy as np
import pytest

from var_jax import data
from var_jax.data import sources

N_TRAIN = 48


@pytest.fixture(scope='module')
def cfg(tmp_path_factory):
  c = data.default_config()
  c.data_dir = str(tmp_path_factory.mktemp('tfds'))
  c.image_size, c.num_train, c.num_eval, c.mid_ratio = 16, N_TRAIN, 8, 1.0
  c.num_threads = 2
  sources.prepare(c)
  return c


@pytest.fixture(scope='module')
def record_ids(cfg):
  """{image bytes: record index} for every train record, read in file order."""
  loader = data.make_loader(cfg, split='train', global_batch_size=1, seed=0, train=False, process_index=0,
                            process_count=1, num_epochs=1)
  ids = {b['image'][0].tobytes(): i for i, b in enumerate(loader)}
  assert len(ids) == N_TRAIN
  return ids


def _ids(batches, record_ids):
  return [record_ids[img.tobytes()] for b in batches for img in b['image']]


def _take(loader, n):
  return [next(loader) for _ in range(n)]


def _loader(cfg, **kw):
  args = dict(split='train', global_batch_size=8, seed=3, train=True, process_index=0, process_count=1)
  args.update(kw)
  return data.make_loader(cfg, **args)


def test_batches_follow_the_contract(cfg):
  c = ml_collections.ConfigDict(cfg.to_dict())
  c.mid_ratio = 1.125  # The VAR resize and random crop proper.
  batch = next(_loader(c, global_batch_size=12, process_count=3, process_index=1))
  assert set(batch) == {'image', 'label'}
  assert batch['image'].shape == (4, 16, 16, 3) and batch['image'].dtype == np.float32
  assert batch['label'].shape == (4,) and batch['label'].dtype == np.int32
  assert -1.0 <= batch['image'].min() < 0 < batch['image'].max() <= 1.0


def test_same_seed_same_batches_other_seed_other_batches(cfg):
  a, b, c = _take(_loader(cfg), 4), _take(_loader(cfg), 4), _take(_loader(cfg, seed=4), 4)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x['image'], y['image'])
    np.testing.assert_array_equal(x['label'], y['label'])
  assert not all(np.array_equal(x['image'], z['image']) for x, z in zip(a, c))


def test_each_epoch_is_a_different_permutation_of_all_records(cfg, record_ids):
  ids = _ids(_take(_loader(cfg), 3 * N_TRAIN // 8), record_ids)
  epochs = [ids[i * N_TRAIN:(i + 1) * N_TRAIN] for i in range(3)]
  for e in epochs:
    assert sorted(e) == list(range(N_TRAIN))
  assert epochs[0] != epochs[1] != epochs[2]


@pytest.mark.parametrize('process_count', [3, 5])
def test_shards_are_disjoint_and_cover_the_split(cfg, record_ids, process_count):
  shards = []
  for p in range(process_count):
    loader = _loader(cfg, global_batch_size=process_count, process_index=p, process_count=process_count,
                     train=False, num_epochs=1)
    shards.append(set(_ids(list(loader), record_ids)))
  covered = N_TRAIN // process_count * process_count  # the incomplete last global batch is left out
  assert sum(len(s) for s in shards) == covered
  assert set().union(*shards) == set(range(covered))


def _global(cfg, process_count, n, **kw):
  """n global batches as the concatenation of every process's rows."""
  loaders = [_loader(cfg, process_index=p, process_count=process_count, **kw) for p in range(process_count)]
  return loaders, [{k: np.concatenate([b[k] for b in parts]) for k in parts[0]}
                   for parts in zip(*[_take(l, n) for l in loaders])]


@pytest.fixture(scope='module')
def augmenting(cfg):
  c = ml_collections.ConfigDict(cfg.to_dict())
  c.hflip, c.mid_ratio = True, 1.25  # random crops and flips are part of what must not depend on the topology
  return c


def test_the_global_batch_does_not_depend_on_the_process_count(augmenting):
  _, reference = _global(augmenting, 1, 7)  # 7 batches of 8 cross the first epoch boundary (48 records)
  for process_count in (2, 4):
    for x, y in zip(reference, _global(augmenting, process_count, 7)[1]):
      np.testing.assert_array_equal(x['image'], y['image'])
      np.testing.assert_array_equal(x['label'], y['label'])


def test_a_state_saved_on_two_processes_restores_on_one_and_the_reverse(augmenting):
  _, reference = _global(augmenting, 1, 6)
  two, _ = _global(augmenting, 2, 3)
  one = _loader(augmenting)
  one.set_state(json.loads(json.dumps(two[0].get_state())))
  for x, y in zip(reference[3:5], _take(one, 2)):
    np.testing.assert_array_equal(x['image'], y['image'])
  for p, loader in enumerate(two):
    loader.set_state(one.get_state())
    np.testing.assert_array_equal(next(loader)['image'], reference[5]['image'][p * 4:(p + 1) * 4])


def test_worker_processes_give_the_same_batches(augmenting):
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # grain reads its absl flags, as it does under an entry point
  workers = ml_collections.ConfigDict(augmenting.to_dict())
  workers.worker_count = 2
  for x, y in zip(_take(_loader(augmenting, process_index=1, process_count=2), 3),
                  _take(_loader(workers, process_index=1, process_count=2), 3)):
    np.testing.assert_array_equal(x['image'], y['image'])


def test_train_shards_are_disjoint_within_an_epoch(cfg, record_ids):
  per_process = [set(_ids(_take(_loader(cfg, global_batch_size=8, process_index=p, process_count=2), 3),
                          record_ids)) for p in range(2)]
  assert len(per_process[0]) == len(per_process[1]) == 12 and not per_process[0] & per_process[1]


@pytest.mark.parametrize('skip', [2, 7])  # 7 batches of 8 crosses the first epoch boundary (48 records).
def test_restored_iterator_continues_exactly(cfg, skip):
  flipping = ml_collections.ConfigDict(cfg.to_dict())
  flipping.hflip, flipping.mid_ratio = True, 1.25  # Random crops and flips must resume too.
  a = _loader(flipping)
  _take(a, skip)
  state = json.loads(json.dumps(a.get_state()))
  expected = _take(a, 4)
  b = _loader(flipping)
  next(b)  # A loader that has moved elsewhere, then is restored.
  b.set_state(state)
  for x, y in zip(expected, _take(b, 4)):
    np.testing.assert_array_equal(x['image'], y['image'])
    np.testing.assert_array_equal(x['label'], y['label'])


def test_eval_reads_in_file_order_without_augmentation(cfg):
  a = next(_loader(cfg, train=False, split='validation'))
  b = next(_loader(cfg, train=False, split='validation', seed=99))
  np.testing.assert_array_equal(a['image'], b['image'])


def test_bad_batch_sizes_and_splits_are_one_line_errors(cfg):
  with pytest.raises(ValueError, match='global batch 10 must be a positive multiple of the 4 processes'):
    _loader(cfg, global_batch_size=10, process_count=4)
  with pytest.raises(ValueError, match=r"split 'test' not in synthetic_shapes .* \(it has"):
    _loader(cfg, split='test')
