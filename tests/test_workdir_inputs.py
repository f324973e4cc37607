"""Inputs checked where they enter, before a run folder is touched: optimizer values, `patch_nums` order
(first), dataset folders, the dataset's classes against `model.num_classes`, empty class folders."""
import logging
import types

from conftest import load_experiment
import pytest

from var_jax import errors
from var_jax.data import image_folder
from var_jax.train import config as config_lib
from var_jax.train import task as task_lib
from var_jax.train.tasks import var as var_task


def _resolve(**overrides):
  c = load_experiment('smoke', 'tokens')
  for key, value in overrides.items():
    group, leaf = key.split('.')
    c[group][leaf] = value
  return config_lib.resolve(c, 1)


@pytest.mark.parametrize('key, value', [
    ('optim.lr', -1e-3), ('optim.lr', float('nan')), ('optim.base_lr', 0.0), ('optim.weight_decay', -0.1),
    ('optim.b1', 1.0), ('optim.b2', -0.5), ('optim.eps', 0.0), ('optim.grad_clip', float('inf')),
    ('optim.final_lr_frac', 2.0),
])
def test_optimizer_values_out_of_range_are_refused_naming_the_key(key, value):
  with pytest.raises(errors.ConfigError, match=key.replace('base_lr', 'lr').replace('.', r'\.')):
    _resolve(**{key: value})


def test_patch_nums_order_is_checked_first():
  # num_heads=7 does not divide embed_dim either; the order of the scales is what is named.
  with pytest.raises(errors.ConfigError, match=r'model\.patch_nums=\(1, 3, 2, 4\) must be increasing'):
    _resolve(**{'model.patch_nums': (1, 3, 2, 4), 'model.num_heads': 7})


@pytest.mark.parametrize('name', ['image_folder', 'tokens'])
def test_a_missing_dataset_folder_fails_in_resolve(tmp_path, name):
  with pytest.raises(errors.DataError, match='data.path'):
    _resolve(**{'data.name': name})
  with pytest.raises(errors.DataError, match='nowhere.*is not a directory'):
    _resolve(**{'data.name': name, 'data.path': str(tmp_path / 'nowhere')})


def _var_batches(monkeypatch, dataset_classes, model_classes):
  loader = types.SimpleNamespace(num_classes=dataset_classes)
  monkeypatch.setattr(task_lib.Task, 'batches', lambda self, split, **kw: loader)
  task = object.__new__(var_task.VarTask)  # the class check needs no models
  task.config = types.SimpleNamespace(data=types.SimpleNamespace(name='image_folder'))
  task.model = types.SimpleNamespace(num_classes=model_classes)
  return task.batches('train', process_index=0, process_count=1)


def test_more_classes_in_the_data_than_the_model_has_is_an_error_fewer_a_warning(monkeypatch, caplog):
  with pytest.raises(errors.ConfigError, match='model.num_classes=1 .* has 3 classes'):
    _var_batches(monkeypatch, 3, 1)
  with caplog.at_level(logging.WARNING):
    _var_batches(monkeypatch, 3, 5)
  assert any('3 classes' in r.getMessage() for r in caplog.records)


def test_empty_class_folders_are_skipped_with_a_warning(tmp_path, caplog):
  for name in ('cat', 'dog'):
    (tmp_path / name).mkdir()
    (tmp_path / name / 'a.png').write_bytes(b'x')
  (tmp_path / 'empty').mkdir()
  with caplog.at_level(logging.WARNING):
    files, classes = image_folder.scan(tmp_path)
  assert classes == ['cat', 'dog'] and len(files['train']) == 2
  assert any('empty' in r.getMessage() and 'skipped' in r.getMessage() for r in caplog.records)
