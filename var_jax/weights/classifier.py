"""Classifier folders: `config.json` (Classifier attributes, image size, class names) + `params.npz`.

`params.npz` uses the state-dict conventions of `var_jax.weights.state_dict` (module path joined with '.',
`kernel` -> `weight` in torch layout), so loading checks every key and shape against the configured model.
`task = 'classifier'` writes `WORKDIR/classifier`; the `shapes:PATH` feature extractor reads it.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from var_jax import errors
from var_jax.models import classifier
from var_jax.weights import state_dict as sd

CONFIG_JSON = 'config.json'
PARAMS_FILE = 'params.npz'
FIELDS = tuple(f.name for f in dataclasses.fields(classifier.Classifier) if f.name not in ('parent', 'name'))
_KEYMAP = sd.KeyMap(rules=())


@dataclasses.dataclass(frozen=True)
class Folder:
  """A loaded classifier: the module, its params, the image size it was trained on, its class names."""
  model: classifier.Classifier
  params: sd.Params
  image_size: int
  classes: tuple[str, ...]


def attributes(model: classifier.Classifier) -> dict[str, Any]:
  return {k: list(v) if isinstance(v, tuple) else v for k, v in
          ((name, getattr(model, name)) for name in FIELDS)}


def model_from(attrs: dict[str, Any], what: str) -> classifier.Classifier:
  """A Classifier from attribute values; WeightsError for an unknown name or a bad value."""
  unknown = sorted(set(attrs) - set(FIELDS))
  if unknown:
    raise errors.WeightsError(f'{what}: unknown Classifier attributes {unknown}; known: {list(FIELDS)}')
  attrs = {k: tuple(v) if isinstance(v, list) else v for k, v in attrs.items()}
  widths, groups = attrs.get('widths', (1,)), attrs.get('norm_groups', 1)
  if not (widths and all(isinstance(w, int) and w > 0 and w % min(groups, w) == 0 for w in widths)):
    raise errors.WeightsError(f'{what}: widths={widths} must be positive and divisible by '
                              f'min(norm_groups={groups}, width)')
  return classifier.Classifier(**attrs)


def param_shapes(model: classifier.Classifier, image_size: int) -> sd.Params:
  img = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  return nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), img)['params'])


def save(path: str, model: classifier.Classifier, params: sd.Params, *, image_size: int,
         classes: Sequence[str]) -> str:
  """Writes the folder `path`; returns it."""
  os.makedirs(path, exist_ok=True)
  meta = dict(model=attributes(model), image_size=int(image_size), classes=list(classes))
  with open(os.path.join(path, CONFIG_JSON), 'w') as f:
    json.dump(meta, f, indent=1)
  sd.write_state_dict(os.path.join(path, PARAMS_FILE), sd.params_to_state_dict(params, _KEYMAP))
  return path


def _read_config(path: str) -> dict[str, Any]:
  if not os.path.isdir(path):
    raise errors.WeightsError(f'{path}: no such classifier folder (train one with task=classifier: '
                              'python -m var_jax.train --config=experiments/classifier_shapes.py)')
  config_path = os.path.join(path, CONFIG_JSON)
  try:
    with open(config_path) as f:
      meta = json.load(f)
  except FileNotFoundError:
    raise errors.WeightsError(f'{path}: classifier folder has no {CONFIG_JSON}') from None
  except ValueError as e:
    raise errors.WeightsError(f'{config_path}: not JSON ({e})') from None
  missing = [k for k in ('model', 'image_size', 'classes') if not isinstance(meta, dict) or k not in meta]
  if missing:
    raise errors.WeightsError(f'{config_path}: missing keys {missing}')
  return meta


def load(path: str) -> Folder:
  """The classifier folder at `path`; WeightsError (one line) when it is missing or does not fit."""
  meta = _read_config(path)
  model = model_from(dict(meta['model']), what=os.path.join(path, CONFIG_JSON))
  if len(meta['classes']) != model.num_classes:
    raise errors.WeightsError(f'{path}: {len(meta["classes"])} class names for num_classes={model.num_classes}')
  params_path = os.path.join(path, PARAMS_FILE)
  if not os.path.exists(params_path):
    raise errors.WeightsError(f'{path}: classifier folder has no {PARAMS_FILE}')
  params, _ = sd.state_dict_to_params(sd.read_state_dict(params_path),
                                      param_shapes(model, int(meta['image_size'])), _KEYMAP, what=params_path)
  return Folder(model=model, params=params, image_size=int(meta['image_size']), classes=tuple(meta['classes']))
