"""The sharded engine on 8 fake CPU devices: same losses on every mesh, shard shapes, FLOP counts
and one-line config errors."""
import pathlib
import subprocess
import sys

from conftest import load_experiment
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from var_jax.train import config as config_lib
from var_jax.train import engine as engine_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
# The reference, pure data parallelism, and all three axes at once (each mesh compiles the step anew).
MESHES = [(1, 1, 1), (8, 1, 1), (2, 2, 2)]


def smoke_config(arg=None):
  return load_experiment('smoke', arg)


def make_engine(cfg, mesh):
  cfg = cfg.copy_and_resolve_references()
  cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = mesh
  n = int(np.prod(mesh))
  return engine_lib.Engine(config_lib.resolve(cfg, n), jax.devices()[:n])


@pytest.fixture(scope='module')
def image_cfg(tmp_path_factory):
  cfg = smoke_config()
  cfg.data.update(dict(data_dir=str(tmp_path_factory.mktemp('tfds')), num_train=64, num_eval=32))
  return cfg


@pytest.fixture(scope='module')
def batches(image_cfg):
  """Three global batches of 32px synthetic shapes, read once."""
  it = make_engine(image_cfg, (1, 1, 1)).batches('train')
  return [next(it) for _ in range(3)]


@pytest.fixture(scope='module')
def sharded_222(image_cfg):
  """An engine on (2, 2, 2) and its freshly initialised (already sharded) state."""
  engine = make_engine(image_cfg, (2, 2, 2))
  return engine, engine.init_state()


def test_params_and_optimizer_state_are_created_sharded(sharded_222):
  engine, state = sharded_222
  p, mu = state.params, state.opt_state[1].mu  # chain: clip, adam, decay, lr
  C, H, V, F = 64, 8, 64, 256
  # (parameter, global shape, shard shape on data=2 x fsdp=2 x tensor=2)
  expected = [
      (p['head']['kernel'], (C, V), (C // 2, V // 2)),              # embed->fsdp, vocab->tensor
      (p['blocks']['fc1']['kernel'], (2, C, F), (2, C // 2, F // 2)),  # layers, embed, mlp
      (p['blocks']['fc2']['kernel'], (2, F, C), (2, F // 2, C // 2)),
      (p['blocks']['attn']['qkv']['kernel'], (2, C, 3, H, C // H), (2, C // 2, 3, H // 2, C // H)),
      (p['blocks']['attn']['scale_mul'], (2, H), (2, H // 2)),
      (p['class_emb'], (11, C), (11, C // 2)),
      (mu['head']['kernel'], (C, V), (C // 2, V // 2)),
      (mu['blocks']['fc1']['kernel'], (2, C, F), (2, C // 2, F // 2)),
  ]
  for x, shape, shard in expected:
    assert x.shape == shape
    assert {s.data.shape for s in x.addressable_shards} == {shard}
  assert state.step.sharding.is_fully_replicated
  assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(state.frozen))


def test_same_losses_on_every_mesh_and_in_one_call(sharded_222, image_cfg, batches):
  host_state = jax.device_get(sharded_222[1])
  losses = {}
  for mesh in MESHES:
    engine = make_engine(image_cfg, mesh)
    state = jax.device_put(host_state, engine.state_shardings)
    run = []
    for batch in batches:
      state, metrics = engine.train_step(state, engine.global_batch(batch))
      run.append(float(metrics['loss']))
    losses[mesh] = run
  # The last mesh again, its steps in one call (train.steps_per_call = 3): batches stacked, rows still sharded.
  state = jax.device_put(host_state, engine.state_shardings)
  losses['one call'] = engine.train_steps(state, engine.stacked_batch(batches))[1]['loss']
  reference = np.array(losses[(1, 1, 1)])
  assert np.all(np.isfinite(reference)) and reference[0] > reference[-1]  # it trains
  for mesh, run in losses.items():
    np.testing.assert_allclose(run, reference, rtol=1e-5, err_msg=f'mesh {mesh}')


def _xla_flops(engine, batch_size):
  L = sum(p * p for p in engine.task.patch_nums)
  batch = {'tokens': jax.ShapeDtypeStruct((batch_size, L), jnp.int32, sharding=engine.batch_sharding),
           'label': jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=engine.batch_sharding)}
  return engine.lower_train_step(engine.abstract_state(), batch).cost_analysis()['flops']


@pytest.mark.parametrize('depth', [2, 16])
def test_logged_flops_match_xla_count(depth):
  """flops_seen per step (analytic) vs XLA's count of the whole lowered train step (not run).

  Layers are unrolled here because XLA's cost analysis counts a scanned body once.
  """
  cfg = smoke_config('tokens')
  cfg.model.scan_layers = False
  if depth == 16:
    pn = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    cfg.model.update(dict(depth=16, embed_dim=None, num_heads=None, vocab_size=4096, cvae=32,
                          patch_nums=pn, num_classes=1000))
    cfg.tokenizer.update(dict(vocab_size=4096, z_channels=32, patch_nums=pn))
  engine = make_engine(cfg, (1, 1, 1))
  ratio = _xla_flops(engine, cfg.batch_size) / engine.flops_per_step
  assert 0.9 < ratio < 1.1, ratio


@pytest.mark.parametrize('override,message', [
    (dict(optim=dict(lrr=1.0)), r"config: unknown key 'optim.lrr'"),
    (dict(mesh=dict(data=3)), r'mesh.data=3, mesh.fsdp=1, mesh.tensor=1 has 3 devices but 8'),
    (dict(batch_size=12, mesh=dict(data=8)),
     r'config: batch_size=12 is not divisible by the data-parallel size 8'),
    (dict(model=dict(depth=3, embed_dim=64, num_heads=None)),
     r'model.embed_dim=64 must be divisible by num_heads=3'),
    (dict(optim=dict(schedule='linear')), r"optim.schedule='linear'; expected one of"),
    (dict(model=dict(depth=0)), r'config: model\.depth=0 must be a positive integer'),
    (dict(eval=dict(batches=0)), r'config: eval\.batches=0 must be positive'),
    (dict(train=dict(steps_per_call=4)), r'config: checkpoint\.every_steps=10 must be a multiple of '
                                          r'train\.steps_per_call=4'),
])
def test_bad_config_one_line_errors(override, message):
  cfg = smoke_config('tokens').to_dict()
  for key, value in override.items():
    cfg[key] = dict(cfg[key], **value) if isinstance(value, dict) else value
  with pytest.raises(ValueError, match=message) as e:
    config_lib.resolve(cfg, num_devices=8)
  assert '\n' not in str(e.value)


def test_cli_rejects_unknown_override_in_one_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, '-m', 'var_jax.train', '--config=experiments/smoke.py:tokens',
       f'--workdir={tmp_path}', '--config.optim.lrr=3'],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and 'lrr' in lines[0] and 'error' in lines[0], proc.stderr


def test_checkpoint_restores_on_other_meshes(sharded_222, image_cfg, tmp_path):
  from var_jax.train import checkpoint as checkpoint_lib
  host_state = jax.device_get(sharded_222[1])
  saved_on = make_engine(image_cfg, (2, 4, 1))
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), keep=2, keep_every=None, async_save=True)
  ckpt.save(jax.device_put(host_state, saved_on.state_shardings), {'data': {'index': 3}})
  ckpt.wait()
  for mesh in [(8, 1, 1), (1, 1, 1)]:
    engine = make_engine(image_cfg, mesh)
    state, meta = ckpt.restore_latest(engine.abstract_state(), engine.state_shardings)
    assert meta['data'] == {'index': 3}
    head = state.params['head']['kernel']
    assert head.sharding.mesh.devices.size == int(np.prod(mesh))
    assert {s.data.shape for s in head.addressable_shards} == {(64, 64)}  # no fsdp/tensor split
    for got, want in zip(jax.tree.leaves(jax.device_get((state.params, state.opt_state))),
                         jax.tree.leaves((host_state.params, host_state.opt_state))):
      np.testing.assert_array_equal(got, want)
  ckpt.close()
