"""image_folder builder over a folder made here, broken files included; TFDS datasets by name (mocked)."""
import io

import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

from var_jax import data
from var_jax.data import image_folder
from var_jax.data import sources


def _save(path, img: PIL.Image.Image, fmt='PNG'):
  buf = io.BytesIO()
  img.save(buf, format=fmt)
  path.write_bytes(buf.getvalue())
  return buf.getvalue()


def _make_folder(root):
  """cat: 3 good + corrupt, zero-byte, truncated, tiny; dog: 1 good + CMYK, grayscale, RGBA, 16-bit."""
  rng = np.random.default_rng(0)
  cat, dog = root / 'cat', root / 'dog'
  cat.mkdir(parents=True)
  dog.mkdir()
  for i in range(3):
    _save(cat / f'good{i}.png', PIL.Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)))
  (cat / 'corrupt.jpg').write_bytes(b'definitely not a jpeg')
  (cat / 'empty.jpg').write_bytes(b'')
  jpeg = _save(cat / 'truncated.jpg', PIL.Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), 'JPEG')
  (cat / 'truncated.jpg').write_bytes(jpeg[:len(jpeg) // 2])
  _save(cat / 'tiny.png', PIL.Image.new('RGB', (3, 3)))
  _save(dog / 'good.jpg', PIL.Image.new('RGB', (30, 20), (10, 200, 30)), 'JPEG')
  _save(dog / 'cmyk.jpg', PIL.Image.new('CMYK', (20, 20), (0, 255, 255, 0)), 'JPEG')
  _save(dog / 'gray.png', PIL.Image.new('L', (20, 20), 77))
  _save(dog / 'rgba.png', PIL.Image.new('RGBA', (20, 20), (0, 0, 0, 0)))
  _save(dog / 'deep.png', PIL.Image.fromarray(np.full((20, 20), 65535, np.uint16)))
  (dog / '.hidden').write_bytes(b'ignored')


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp('images') / 'pets'
  _make_folder(root)
  return root


@pytest.fixture(scope='module')
def cfg(folder, tmp_path_factory):
  c = data.default_config()
  c.name, c.path, c.data_dir, c.image_size = 'image_folder', str(folder), str(tmp_path_factory.mktemp('tfds')), 16
  c.eval_split = 'train'
  return c


def test_broken_files_are_counted_and_skipped_converted_ones_kept(cfg, folder):
  builder = sources.prepare(cfg)
  problems = builder.info.metadata['problems']['train']
  assert problems == {'ok': 4, 'corrupt': 1, 'zero_byte': 1, 'truncated': 1, 'tiny': 1, 'cmyk': 1,
                      'grayscale': 1, 'rgba': 1, '16bit': 1}
  assert builder.info.features['label'].names == ['cat', 'dog']
  records = builder.as_data_source('train')
  assert len(records) == 8
  by_name = {records[i]['file_name'].decode(): records[i] for i in range(len(records))}
  assert sorted(by_name) == sorted(['cat/good0.png', 'cat/good1.png', 'cat/good2.png', 'dog/good.jpg',
                                    'dog/cmyk.jpg', 'dog/gray.png', 'dog/rgba.png', 'dog/deep.png'])
  assert all(r['image'].shape[-1] == 3 for r in by_name.values())
  assert by_name['dog/gray.png']['image'][0, 0].tolist() == [77, 77, 77]
  assert by_name['dog/rgba.png']['image'][0, 0].tolist() == [255, 255, 255]
  assert by_name['dog/deep.png']['image'][0, 0].tolist() == [255, 255, 255]
  assert by_name['dog/cmyk.jpg']['image'][5, 5, 0] > 200
  assert {int(r['label']) for n, r in by_name.items() if n.startswith('dog/')} == {1}


def test_loader_reads_the_folder(cfg):
  loader = data.make_loader(cfg, split='train', global_batch_size=8, seed=0, train=True, process_index=0,
                            process_count=1)
  batch = next(loader)
  assert batch['image'].shape == (8, 16, 16, 3)
  assert sorted(batch['label'].tolist()) == [0, 0, 0, 1, 1, 1, 1, 1]


def test_split_folders_become_splits(tmp_path):
  for split in ('train', 'val'):
    class_dir = tmp_path / 'root' / split / 'a'
    class_dir.mkdir(parents=True)
    _save(class_dir / 'x.png', PIL.Image.new('RGB', (12, 12), (1, 2, 3)))
  (tmp_path / 'root' / 'val' / 'b').mkdir()
  _save(tmp_path / 'root' / 'val' / 'b' / 'y.png', PIL.Image.new('RGB', (12, 12)))
  builder = image_folder.prepare(str(tmp_path / 'root'), str(tmp_path / 'tfds'))
  assert set(builder.info.splits.keys()) == {'train', 'validation'}
  assert builder.info.features['label'].names == ['a', 'b']


def test_missing_or_empty_folder_is_a_one_line_error_naming_it(tmp_path):
  c = data.default_config()
  c.name, c.data_dir = 'image_folder', str(tmp_path / 'tfds')
  c.path = str(tmp_path / 'nowhere')
  with pytest.raises(ValueError, match=f"'{tmp_path / 'nowhere'}' is not a directory; put one sub-folder"):
    sources.prepare(c)
  (tmp_path / 'empty' / 'cls').mkdir(parents=True)
  c.path = str(tmp_path / 'empty')
  with pytest.raises(ValueError, match=f"no images found under '{tmp_path / 'empty'}'"):
    sources.prepare(c)


def test_folder_of_only_broken_files_is_an_error(tmp_path):
  (tmp_path / 'bad' / 'cls').mkdir(parents=True)
  (tmp_path / 'bad' / 'cls' / 'a.jpg').write_bytes(b'')
  with pytest.raises(ValueError, match='every file under .* is unreadable'):
    image_folder.prepare(str(tmp_path / 'bad'), str(tmp_path / 'tfds'))


def test_named_tfds_dataset_through_mock_data(tmp_path):
  c = data.default_config()
  c.name, c.data_dir, c.image_size, c.eval_split = 'cifar10', str(tmp_path), 8, 'test'
  with tfds.testing.mock_data(num_examples=12):
    loader = data.make_loader(c, split='train', global_batch_size=4, seed=0, train=True, process_index=0,
                              process_count=1)
    batch = next(loader)
    assert loader.num_classes == 10
    eval_batch = next(data.make_loader(c, split=c.eval_split, global_batch_size=4, seed=0, train=False,
                                       process_index=0, process_count=1))
  assert batch['image'].shape == (4, 8, 8, 3) and batch['label'].dtype == np.int32
  assert eval_batch['image'].shape == (4, 8, 8, 3)


def test_missing_manual_dir_is_a_one_line_error_saying_what_to_put_there(tmp_path):
  c = data.default_config()
  c.name, c.data_dir, c.manual_dir = 'imagenet2012', str(tmp_path), str(tmp_path / 'manual')
  with pytest.raises(ValueError) as e:
    sources.prepare(c)
  msg = str(e.value)
  assert '\n' not in msg and str(tmp_path / 'manual') in msg and 'ILSVRC2012_img_train.tar' in msg


def test_unknown_dataset_name_is_a_clear_error(tmp_path):
  c = data.default_config()
  c.name, c.data_dir = 'no_such_dataset_xyz', str(tmp_path)
  with pytest.raises(ValueError, match="data.name: 'no_such_dataset_xyz' is not"):
    sources.prepare(c)
