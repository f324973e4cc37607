"""The generator: a finished run folder (or official weights) loaded and sampled without training code."""
import jax
import numpy as np
import pytest

from var_jax import errors
from var_jax.generate import generator
from var_jax.generate import orderings
from var_jax.models import tokenizer
from var_jax.models import var as var_lib
from var_jax.train import checkpoint
from var_jax.train import config as config_lib
from var_jax.train import rundir as rundir_lib
from var_jax.train import state as state_lib
from var_jax.train import task as task_lib
from var_jax.train import tasks
from var_jax.weights import var as var_weights
from var_jax.weights import vqvae

MODEL = dict(vocab_size=16, cvae=4, patch_nums=(1, 2), num_classes=3, depth=1, embed_dim=32, num_heads=2)
STEP = 3


def _params(model, seed):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (rng.standard_normal(s.shape) * 0.3).astype(np.float32),
                      var_weights.param_shapes(model))


def _write_run(folder, model_overrides=(), task='var'):
  """A run folder as the loop leaves it (config.json, a checkpoint at STEP, DONE), written directly."""
  vae = tokenizer.VQVAE(vocab_size=16, z_channels=4, ch=8, ch_mult=(1, 1), num_res_blocks=1, norm_groups=4,
                        share_quant_resi=2, patch_nums=(1, 2))
  vqvae.save(str(folder / 'tok'), vae, jax.tree.map(np.zeros_like, vqvae.random_params(vae, 0)))
  c = config_lib.base_config('var')
  c.model.update(MODEL)
  c.tokenizer.update(dict(path=str(folder / 'tok'), vocab_size=16, z_channels=4, patch_nums=(1, 2)))
  c.update(dict(steps=STEP, batch_size=2))
  c.data.name = 'synthetic_tokens'
  cfg = config_lib.resolve(c, 1)
  with cfg.ignore_type():
    cfg.task = task
  run = rundir_lib.RunDir(folder / 'run')
  (folder / 'run').mkdir()
  run.write_config(cfg)
  params = _params(var_lib.VAR(**{**MODEL, **dict(model_overrides)}), 0)
  ckpt = checkpoint.Checkpointer(run, keep=1, keep_every=None, async_save=False)
  ckpt.save(state_lib.TrainState(step=np.int32(STEP), params=params, opt_state={}, frozen={}), {'step': STEP})
  ckpt.close()
  run.write_done(dict(step=STEP))
  return run, params


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  return _write_run(tmp_path_factory.mktemp('generator'))


def _refuse(*args, **kwargs):
  raise AssertionError('the generator built training code')


def test_a_finished_run_samples_without_a_task_or_optimizer(finished, monkeypatch):
  run, params = finished
  monkeypatch.setattr(tasks, 'get', _refuse)
  monkeypatch.setattr(task_lib.Task, '__init__', _refuse)
  monkeypatch.setattr(state_lib, 'make_optimizer', _refuse)
  gen = generator.from_run(run)
  assert gen.step == STEP and isinstance(gen.model, var_lib.VAR) and gen.ordering.task == 'var'
  for a, b in zip(jax.tree.leaves(jax.device_get(gen.params)), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  tokens, images = gen.driver(batch_size=2, devices=jax.devices()[:1]).draw(
      np.array([0, 1, 2]), np.arange(3), seed=0, **gen.knobs(cfg=1.5, top_k=900, top_p=0.0))
  assert [t.shape for t in tokens] == [(3, 1), (3, 4)] and images.shape == (3, 4, 4, 3)
  assert images.dtype == np.uint8


def test_folders_that_cannot_be_sampled_are_refused(finished, tmp_path):
  with pytest.raises(errors.ConfigError, match='not a training workdir'):
    generator.from_run(str(tmp_path))
  with pytest.raises(errors.ConfigError, match=f'no step 99; saved steps are \\[{STEP}\\]'):
    generator.from_run(finished[0], step=99)
  (tmp_path / 'cls').mkdir()
  run, _ = _write_run(tmp_path / 'cls', task='classifier')
  with pytest.raises(errors.ConfigError, match=r"trained task 'classifier'; sampling needs one of \('var'"):
    generator.from_run(run)


def test_a_checkpoint_of_another_network_is_a_weights_error(tmp_path):
  run, _ = _write_run(tmp_path, model_overrides=dict(embed_dim=64, num_heads=4))
  with pytest.raises(errors.WeightsError, match='do not match the model'):
    generator.from_run(run)


def test_exactly_one_source(finished):
  with pytest.raises(errors.ConfigError, match='exactly one of --var'):
    generator.load(var='a.pth', workdir=finished[0].path)
  with pytest.raises(errors.ConfigError, match='--var needs --tokenizer'):
    generator.load(var='a.pth')


def test_every_sampled_task_has_an_ordering():
  assert set(orderings.tasks()) >= {'var', 'next_token'}
  for task in orderings.tasks():
    tasks.get(task)  # a registered training task
