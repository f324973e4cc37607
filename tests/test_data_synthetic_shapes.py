"""synthetic_shapes: what the drawings hold, and the TFDS ArrayRecord dataset built from them."""
import numpy as np
import pytest

from var_jax.data import synthetic_shapes


def test_draw_is_seeded_sized_and_labelled():
  img, label = synthetic_shapes.draw_example(np.random.default_rng([0, 0, 5]), 48)
  img2, label2 = synthetic_shapes.draw_example(np.random.default_rng([0, 0, 5]), 48)
  assert img.shape == (48, 48, 3) and img.dtype == np.uint8
  np.testing.assert_array_equal(img, img2)
  assert label == label2 and 0 <= label < len(synthetic_shapes.SHAPES)


def test_draws_cover_every_class_and_vary():
  draws = [synthetic_shapes.draw_example(np.random.default_rng([1, 0, i]), 32) for i in range(200)]
  labels = [label for _, label in draws]
  assert set(labels) == set(range(len(synthetic_shapes.SHAPES)))
  imgs = np.stack([img for img, _ in draws]).astype(np.float32)
  # Not flat: every image has structure, and images differ from each other.
  assert (imgs.reshape(200, -1).std(axis=1) > 1.0).mean() > 0.95
  assert len({img.tobytes() for img, _ in draws}) == 200


def test_a_shape_changes_the_pixels_under_it():
  # Same background (same rng draws before the shapes), with the shape mask drawn at a known pose.
  pose = dict(radius=40.0, cx=64.0, cy=64.0, angle=0.0, aspect=1.0, hole=0.5, shift=0.5)
  square = synthetic_shapes._mask('square', pose, 32)  # pylint: disable=protected-access
  ring = synthetic_shapes._mask('ring', pose, 32)  # pylint: disable=protected-access
  assert square[16, 16] == 1.0 and square[0, 0] == 0.0
  assert ring[16, 16] == 0.0 and ring[16, 16 + 7] == 1.0  # A hole in the middle, paint around it.


def test_prepare_builds_array_record_splits(tmp_path):
  builder = synthetic_shapes.prepare(str(tmp_path), image_size=16, num_train=24, num_eval=6)
  files = sorted(p.name for p in tmp_path.rglob('*array_record*'))
  assert files and all('array_record' in f for f in files)
  train, val = builder.as_data_source('train'), builder.as_data_source('validation')
  assert len(train) == 24 and len(val) == 6
  ex = train[3]
  assert ex['image'].shape == (16, 16, 3) and ex['image'].dtype == np.uint8
  assert 0 <= ex['label'] < 10
  labels = sorted(int(train[i]['label']) for i in range(24))
  drawn = sorted(synthetic_shapes.draw_example(np.random.default_rng([0, 0, i]), 16)[1] for i in range(24))
  assert labels == drawn  # The stored labels are those of the seeded drawings (in TFDS's shuffled order).


@pytest.mark.parametrize('kwargs', [dict(image_size=4), dict(num_train=0), dict(max_shapes=0)])
def test_bad_config_is_one_clear_error(kwargs):
  with pytest.raises(ValueError, match='synthetic_shapes: ' + next(iter(kwargs))):
    synthetic_shapes.make_config(**kwargs)


def test_images_do_not_depend_on_the_number_of_build_workers(tmp_path, monkeypatch):
  monkeypatch.setattr(synthetic_shapes, '_MIN_PER_WORKER', 4)  # Use worker processes even for 12 images.
  kw = dict(image_size=16, num_train=12, num_eval=4)
  serial = synthetic_shapes.prepare(str(tmp_path / 'serial'), num_workers=1, **kw).as_data_source('train')
  parallel = synthetic_shapes.prepare(str(tmp_path / 'parallel'), num_workers=2, **kw).as_data_source('train')
  for i in range(12):
    np.testing.assert_array_equal(serial[i]['image'], parallel[i]['image'])
    assert serial[i]['label'] == parallel[i]['label']
