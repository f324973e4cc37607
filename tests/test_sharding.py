"""Mesh construction, logical-axis rules and the FSDP replication check (8 fake CPU devices)."""
import flax.linen as nn
import jax
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from var_jax import sharding


@pytest.mark.parametrize('shape,expected', [
    ((-1, 1, 1), (8, 1, 1)),
    ((2, -1, 1), (2, 4, 1)),
    ((2, 2, -1), (2, 2, 2)),
    ((1, 1, 8), (1, 1, 8)),
])
def test_mesh_shape_fills_minus_one(shape, expected):
  assert sharding.resolve_mesh_shape(shape, 8) == expected


@pytest.mark.parametrize('shape,match', [
    ((3, 1, 1), r'mesh.data=3, mesh.fsdp=1, mesh.tensor=1 has 3 devices but 8 are available'),
    ((3, -1, 1), r'cannot fill 8 devices'),
    ((-1, -1, 1), r'at most one -1'),
    ((0, 1, 1), r'at most one -1'),
])
def test_bad_mesh_is_one_line_error(shape, match):
  with pytest.raises(ValueError, match=match) as e:
    sharding.resolve_mesh_shape(shape, 8)
  assert '\n' not in str(e.value)


def test_make_mesh_axes_and_layout():
  mesh = sharding.make_mesh({'data': 2, 'fsdp': -1, 'tensor': 2})
  assert mesh.axis_names == ('data', 'fsdp', 'tensor')
  assert dict(mesh.shape) == {'data': 2, 'fsdp': 2, 'tensor': 2}
  assert sorted(d.id for d in mesh.devices.flat) == list(range(8))
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


def test_default_rules_map_logical_names():
  rules = sharding.DEFAULT_RULES
  to_mesh = lambda names: nn.logical_to_mesh_axes(names, rules)
  assert to_mesh(('embed', 'mlp')) == P('fsdp', 'tensor')
  assert to_mesh(('layers', 'embed', None, 'heads', 'kv')) == P(None, 'fsdp', None, 'tensor', None)
  assert to_mesh(('embed', 'vocab')) == P('fsdp', 'tensor')
  # Activations: the batch takes data x fsdp, so 'embed' on the same array stays unsharded.
  assert to_mesh(('batch', 'length', 'embed')) == P(('data', 'fsdp'), None, None)
  assert to_mesh(('batch', 'length', 'heads', 'kv')) == P(('data', 'fsdp'), None, 'tensor', None)


def test_rules_from_config_validates_axes():
  rules = sharding.rules_from_config([['embed', 'fsdp'], ['batch', ['data', 'fsdp']], ['kv', None]])
  assert rules == (('embed', 'fsdp'), ('batch', ('data', 'fsdp')), ('kv', None))
  with pytest.raises(ValueError, match=r"sharding.rules: 'embed' maps to unknown mesh axes \['fsdpp'\]"):
    sharding.rules_from_config([['embed', 'fsdpp']])


def test_fsdp_check_fails_loudly_on_replicated_large_param():
  mesh = sharding.make_mesh({'data': 2, 'fsdp': 4, 'tensor': 1})
  shapes = {'big': jax.ShapeDtypeStruct((512, 256), np.float32),
            'small': jax.ShapeDtypeStruct((8, 8), np.float32)}
  logical = {'big': P('embd', 'mlp'), 'small': P(None, None)}  # typo: 'embd' has no rule
  shardings = sharding.logical_shardings(logical, mesh, sharding.DEFAULT_RULES)
  with pytest.raises(ValueError, match=r"mesh.fsdp=4 but 1 large parameter\(s\) are not sharded "
                                       r"over fsdp .*\['big'\] \(512, 256\)"):
    sharding.check_fsdp(shardings, shapes, mesh, min_size=1024)
  good = sharding.logical_shardings({'big': P('embed', 'mlp'), 'small': P(None, None)}, mesh,
                                    sharding.DEFAULT_RULES)
  sharding.check_fsdp(good, shapes, mesh, min_size=1024)
  # Without FSDP nothing is required to be sharded.
  no_fsdp = sharding.make_mesh({'data': 8, 'fsdp': 1, 'tensor': 1})
  sharding.check_fsdp(sharding.logical_shardings(logical, no_fsdp, sharding.DEFAULT_RULES), shapes,
                      no_fsdp, min_size=1024)


def test_batch_sharding_splits_rows_over_data_and_fsdp():
  mesh = sharding.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  x = jax.device_put(np.arange(16 * 3).reshape(16, 3), sharding.batch_sharding(mesh))
  assert {s.data.shape for s in x.addressable_shards} == {(4, 3)}
  assert sharding.data_parallel_size(mesh) == 4
