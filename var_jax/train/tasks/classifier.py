"""`task = 'classifier'`: a small CNN (`var_jax.models.classifier`) trained by cross-entropy on image labels.

Its use is measuring generated images without any download: the run ends with `WORKDIR/classifier`
(`var_jax.weights.classifier`), which the `shapes:PATH` feature extractor reads (features for the Fréchet
distance, logits for IS and per-class sample accuracy). The eval metric is held-out accuracy (`acc`).
`model.num_classes` None takes the number of `data.synthetic_classes` for synthetic_shapes. `augment.dihedral`
applies a random element of the square's symmetry group (flips and transposes) to every training image, which
keeps the label of rotation-invariant classes such as synthetic_shapes' and multiplies their data by eight.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from ml_collections import config_dict

from var_jax import errors
from var_jax import flops
from var_jax.data import config as data_config
from var_jax.data import synthetic_shapes
from var_jax.models import classifier as classifier_lib
from var_jax.train import state as state_lib
from var_jax.train import task as task_lib
from var_jax.weights import classifier as classifier_io


def class_names(c: ml_collections.ConfigDict) -> tuple[str, ...]:
  """Class names of a config's data: the shape kinds for synthetic_shapes, else '0', '1', ..."""
  if c.data.name == data_config.SYNTHETIC_SHAPES:
    return synthetic_shapes.make_config(classes=data_config.option(c.data, 'synthetic_classes')).classes
  return tuple(str(i) for i in range(c.model.num_classes))


def _model(c: ml_collections.ConfigDict) -> classifier_lib.Classifier:
  return classifier_io.model_from(c.model.to_dict(), what='config: model')


def dihedral(x_BHWC: jax.Array, key: jax.Array) -> jax.Array:
  """Each image under a random one of the 8 symmetries of the square (vertical, horizontal flip, transpose)."""
  flip_v, flip_h, transpose = jax.random.bernoulli(key, 0.5, (3, x_BHWC.shape[0], 1, 1, 1))
  x_BHWC = jnp.where(flip_v, x_BHWC[:, ::-1], x_BHWC)
  x_BHWC = jnp.where(flip_h, x_BHWC[:, :, ::-1], x_BHWC)
  return jnp.where(transpose, jnp.swapaxes(x_BHWC, 1, 2), x_BHWC)


def _loss_metrics(logits_BK: jax.Array, label_B: jax.Array) -> dict[str, jax.Array]:
  loss = optax.softmax_cross_entropy_with_integer_labels(logits_BK.astype(jnp.float32), label_B).mean()
  return dict(loss=loss, acc=jnp.mean(jnp.argmax(logits_BK, -1) == label_B))


def train_step(state: state_lib.TrainState, batch: dict, rng: jax.Array, *, model: classifier_lib.Classifier,
               tx: optax.GradientTransformation, lr_fn: optax.Schedule, augment: bool):
  """One optimizer step on the global batch: (new state, loss, acc, grad_norm, lr)."""
  x_BHWC = batch['image']
  if augment:
    x_BHWC = dihedral(x_BHWC, jax.random.fold_in(rng, state.step))

  def loss_fn(params):
    metrics = _loss_metrics(model.apply({'params': params}, x_BHWC)[1], batch['label'])
    return metrics['loss'], metrics

  return task_lib.gradient_step(state, loss_fn, tx, lr_fn)


def eval_step(state: state_lib.TrainState, batch: dict, *, model: classifier_lib.Classifier):
  """Loss and accuracy on clean (unaugmented) images."""
  return _loss_metrics(model.apply({'params': state.params}, batch['image'])[1], batch['label'])


class ClassifierTask(task_lib.Task):
  """The image classifier behind the `shapes` feature extractor."""

  name = 'classifier'
  console_keys = ('loss', 'acc', 'lr', 'grad_norm')
  summary_keys = ('loss', 'acc')

  @classmethod
  def default_config(cls) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict(dict(
        num_classes=config_dict.placeholder(int),  # None: the number of data.synthetic_classes
        widths=(16, 32, 64), feature_dim=64, norm_groups=8))
    c.augment = ml_collections.ConfigDict(dict(dihedral=True))
    c.optim = ml_collections.ConfigDict(dict(base_lr=1e-2, b2=0.999, weight_decay=0.0, schedule='cos',
                                             warmup_steps=20, final_lr_frac=0.05, grad_clip=1.0))
    return c

  @classmethod
  def resolve(cls, c: ml_collections.ConfigDict) -> None:
    errors.check_config(c.mesh.fsdp == 1 and c.mesh.tensor == 1,
        f'mesh.fsdp={c.mesh.fsdp}, mesh.tensor={c.mesh.tensor}: '
           'the classifier trains data-parallel (its params are replicated); put the devices on mesh.data')
    errors.check_config(c.data.name not in data_config.TOKEN_SOURCES,
        f'data.name={c.data.name!r}: the classifier trains on '
           'images')
    if c.model.num_classes is None:
      errors.check_config(c.data.name == data_config.SYNTHETIC_SHAPES, 'model.num_classes is needed for '
             f'data.name={c.data.name!r} (only synthetic_shapes knows its classes)')
      c.model.num_classes = len(class_names(c))
    errors.check_config(c.model.num_classes >= 2, f'model.num_classes={c.model.num_classes} must be >= 2')
    _model(c)
    smallest = 2 ** (len(c.model.widths) - 1)
    errors.check_config(c.data.image_size >= smallest, f'data.image_size={c.data.image_size} is too small for '
           f'{len(c.model.widths)} stages (model.widths); need >= {smallest}')

  @classmethod
  def sizes(cls, c: ml_collections.ConfigDict) -> task_lib.Sizes:
    model = _model(c)
    shapes = classifier_io.param_shapes(model, c.data.image_size)
    img = jax.ShapeDtypeStruct((1, c.data.image_size, c.data.image_size, 3), jnp.float32)
    forward = flops.matmul_flops(lambda p, x: model.apply({'params': p}, x), shapes, img)
    params = flops.count_params(shapes)
    return task_lib.Sizes(params=params, params_nonembed=params, tokens_per_example=1,
                          flops_per_example=3.0 * forward)

  @classmethod
  def columns(cls, c: ml_collections.ConfigDict) -> dict[str, Any]:
    return dict(widths='-'.join(str(w) for w in c.model.widths), feature_dim=c.model.feature_dim)

  @classmethod
  def run_prefix(cls, c: ml_collections.ConfigDict) -> str:
    return 'cls-w' + '-'.join(str(w) for w in c.model.widths)

  def __init__(self, config: ml_collections.ConfigDict):
    self.model = _model(config)
    self.lr_fn = state_lib.lr_schedule(config.optim, config.optim.total_steps)
    super().__init__(config)

  def init_params(self, key: jax.Array, start: Any = None) -> Any:
    if start is not None:
      return start
    size = self.config.data.image_size
    return self.model.init(key, jnp.zeros((1, size, size, 3), jnp.float32))['params']

  def train_step(self, state, batch, rng):
    return train_step(state, batch, rng, model=self.model, tx=self.tx, lr_fn=self.lr_fn,
                      augment=self.config.augment.dihedral)

  def eval_step(self, state, batch):
    return eval_step(state, batch, model=self.model)

  def describe(self) -> dict[str, Any]:
    return classifier_io.attributes(self.model)

  def export(self, state, path: str) -> str:
    """Writes the classifier folder that `var_jax.weights.classifier.load` reads."""
    params = jax.tree.map(np.asarray, jax.device_get(state.params))
    if jax.process_index() == 0:
      classifier_io.save(path, self.model, params, image_size=self.config.data.image_size,
                         classes=class_names(self.config))
    return path

  def finish(self, state, workdir: str) -> dict:
    return {'classifier': self.export(state, os.path.join(workdir, 'classifier'))}


TASK = ClassifierTask
