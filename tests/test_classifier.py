"""The shapes classifier: its tiny config's held-out accuracy, the exported folder, the `shapes:DIR` extractor,
sample accuracy, and one-line errors for bad folders and configs.

The accuracy test trains experiments/classifier_shapes.py:tiny through the engine on images drawn in memory with
the config's own data keys (the loader's records are those same drawings, PNG-encoded), so no dataset is built.
"""
import json
import os
import shutil

from conftest import load_experiment
import jax
import numpy as np
import pytest

from var_jax import errors
from var_jax.data import synthetic_shapes
from var_jax.eval import features
from var_jax.eval import metrics
from var_jax.train import config as config_lib
from var_jax.train import engine as engine_lib
from var_jax.weights import classifier as classifier_io

HELD_OUT = 256


def draw(c, n, seed):
  """n images of the config's synthetic_shapes data as (uint8 [n, H, W, 3], labels [n])."""
  d = c.data
  classes = synthetic_shapes.make_config(classes=d.synthetic_classes).classes
  rng = np.random.default_rng(seed)
  images, labels = zip(*[synthetic_shapes.draw_example(rng, d.image_size, d.max_shapes, d.synthetic_style,
                                                       classes, tuple(d.synthetic_radius)) for _ in range(n)])
  return np.stack(images), np.array(labels, np.int32)


def as_input(images):
  return images.astype(np.float32) / 127.5 - 1.0


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """The tiny config trained on one device: (config, engine, state, exported folder, held-out images, labels)."""
  cfg = config_lib.resolve(load_experiment('classifier_shapes', 'tiny'), 1)
  engine = engine_lib.Engine(cfg, jax.devices()[:1])
  train_x, train_y = draw(cfg, cfg.data.num_train, seed=0)
  state = engine.init_state()
  order = np.random.default_rng(0)
  for _ in range(cfg.steps):
    i = order.integers(0, len(train_x), cfg.batch_size)
    state, _ = engine.train_step(state, engine.global_batch({'image': as_input(train_x[i]), 'label': train_y[i]}))
  workdir = str(tmp_path_factory.mktemp('classifier_run'))
  out = engine.task.finish(state, workdir)
  held_x, held_y = draw(cfg, HELD_OUT, seed=1)
  return cfg, engine, state, out['classifier'], held_x, held_y


@pytest.fixture(scope='module')
def extractor(trained):
  return features.get_extractor(f'shapes:{trained[3]}', batch_size=48)  # 256 = 5 full batches + a padded one


def test_tiny_config_reaches_95_percent_held_out_accuracy(trained):
  cfg, engine, state, _, held_x, held_y = trained
  assert cfg.model.num_classes == 4  # from data.synthetic_classes
  accs = [float(engine.eval_step(state, engine.global_batch({'image': as_input(held_x[lo:lo + 64]),
                                                             'label': held_y[lo:lo + 64]}))['acc'])
          for lo in range(0, HELD_OUT, 64)]
  print(f'held-out accuracy {np.mean(accs):.4f} after {cfg.steps} steps')
  assert np.mean(accs) >= 0.95


def test_extractor_shapes_and_it_labels_clean_images(trained, extractor):
  cfg, _, _, _, held_x, held_y = trained
  feats, logits = extractor(held_x)
  assert (extractor.dim, extractor.num_classes) == (cfg.model.feature_dim, 4)
  assert extractor.class_names == ('circle', 'square', 'cross', 'ring')
  assert feats.shape == (HELD_OUT, cfg.model.feature_dim) and logits.shape == (HELD_OUT, 4)
  assert feats.dtype == logits.dtype == np.float32 and (feats >= 0).all()  # post-ReLU features
  mean, per_class = metrics.sample_accuracy(logits, held_y)
  assert mean >= 0.95 and per_class.shape == (4,) and (per_class >= 0.85).all(), per_class


def test_export_round_trips(trained, extractor):
  cfg, _, state, folder, held_x, _ = trained
  loaded = classifier_io.load(folder)
  assert loaded.image_size == cfg.data.image_size and loaded.model.widths == tuple(cfg.model.widths)
  want = jax.tree.map(np.asarray, jax.device_get(state.params))
  assert jax.tree.structure(loaded.params) == jax.tree.structure(want)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(want)))
  _, logits = extractor(held_x[:8])
  _, want_logits = jax.jit(loaded.model.apply)({'params': want}, as_input(held_x[:8]))
  np.testing.assert_allclose(logits, np.asarray(want_logits), rtol=1e-5, atol=1e-5)


def test_sample_accuracy_by_hand():
  logits = np.eye(4, dtype=np.float32)[[0, 1, 1, 1, 0]]  # predicted classes 0, 1, 1, 1, 0
  mean, per_class = metrics.sample_accuracy(logits, np.array([0, 0, 1, 1, 2]))
  np.testing.assert_array_equal(per_class[:3], [0.5, 1.0, 0.0])
  assert np.isnan(per_class[3]) and mean == pytest.approx(0.5)  # class 3 has no samples: not averaged
  with pytest.raises(ValueError):
    metrics.sample_accuracy(logits, np.array([0, 1, 2, 3, 4]))  # label 4 is not a class


def _no_config(d):
  os.remove(os.path.join(d, 'config.json'))


def _bad_json(d):
  with open(os.path.join(d, 'config.json'), 'w') as f:
    f.write('{not json')


def _no_params(d):
  os.remove(os.path.join(d, 'params.npz'))


def _other_widths(d):  # the config now describes a wider network than the params
  path = os.path.join(d, 'config.json')
  with open(path) as f:
    meta = json.load(f)
  meta['model']['widths'] = [32, 32, 64]
  with open(path, 'w') as f:
    json.dump(meta, f)


@pytest.mark.parametrize('corrupt, names', [(_no_config, 'config.json'), (_bad_json, 'config.json'),
                                            (_no_params, 'params.npz'), (_other_widths, 'conv_0.weight')])
def test_bad_folders_are_one_line_weights_errors(trained, tmp_path, corrupt, names):
  folder = str(tmp_path / 'classifier')
  shutil.copytree(trained[3], folder)
  corrupt(folder)
  with pytest.raises(errors.WeightsError) as e:
    features.get_extractor(f'shapes:{folder}')
  assert names in str(e.value) and '\n' not in str(e.value)


def test_missing_folder_wrong_size_and_no_path_are_typed_errors(extractor, tmp_path):
  with pytest.raises(errors.WeightsError, match='no such classifier folder'):
    features.get_extractor(f'shapes:{tmp_path / "absent"}')
  with pytest.raises(errors.ConfigError, match='shapes:DIR'):
    features.get_extractor('shapes')
  with pytest.raises(errors.ConfigError, match='16x16'):
    extractor(np.zeros((2, 32, 32, 3), np.uint8))


@pytest.mark.parametrize('overrides, key', [
    ({'data.name': 'image_folder'}, 'model.num_classes'),
    ({'model.widths': (12, 24)}, 'widths'),
    ({'mesh.fsdp': 2, 'mesh.data': 1}, 'mesh.fsdp'),
    ({'data.image_size': 2}, 'data.image_size'),
])
def test_bad_configs_are_one_config_error(overrides, key, tmp_path):
  c = load_experiment('classifier_shapes', 'tiny')
  c.data.path = str(tmp_path)  # a folder that exists: the dataset check passes, the model's is reached
  for name, value in overrides.items():
    group, field = name.split('.')
    c[group][field] = value
  with pytest.raises(errors.ConfigError) as e:
    config_lib.resolve(c, 2)
  assert key in str(e.value)



def test_a_run_through_the_loop_writes_done_and_the_folder(tmp_path):
  """Two steps through the real loop and loader: DONE has the held-out accuracy, the export loads."""
  from var_jax.train import loop  # pylint: disable=g-import-not-at-top
  c = load_experiment('classifier_shapes', 'tiny')
  c.steps, c.batch_size, c.optim.warmup_steps = 2, 8, 0
  c.checkpoint.every_steps = c.eval.every_steps = c.log.every_steps = 2
  c.eval.batch_size = 16
  c.data.update(dict(data_dir=str(tmp_path / 'data'), num_train=32, num_eval=16, num_threads=1))
  summary = loop.train(c, str(tmp_path / 'run'), devices=jax.devices()[:1])
  assert 0.0 <= summary['eval_acc'] <= 1.0 and summary['model']['num_classes'] == 4
  loaded = classifier_io.load(summary['classifier'])
  assert (loaded.image_size, loaded.classes) == (16, ('circle', 'square', 'cross', 'ring'))
