"""Device mesh over ('data', 'fsdp', 'tensor') and logical-axis sharding rules.

The model names every parameter and activation dimension with a logical axis (`batch`, `embed`,
`heads`, ...). A rule table maps those names onto the mesh: data parallelism and FSDP split the
batch, FSDP additionally shards parameters along `embed`, tensor parallelism shards `heads`, `mlp`
and `vocab`. Changing the mesh shape never changes the maths, only where numbers live.
"""
from __future__ import annotations

from collections.abc import Sequence
import math
from typing import Any

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np

from var_jax import errors

MESH_AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')

# (logical name, mesh axes). Names absent here (and None) are replicated.
DEFAULT_RULES = (
    ('batch', BATCH_AXES),
    ('embed', 'fsdp'),
    ('heads', 'tensor'),
    ('mlp', 'tensor'),
    ('vocab', 'tensor'),
    ('kv', None),
    ('layers', None),
    ('length', None),
)

# Parameters at least this large must be sharded when FSDP is on (see `check_fsdp`).
FSDP_MIN_SIZE = 2**16


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
  """Replaces at most one -1 in (data, fsdp, tensor) by whatever fills `num_devices`."""
  shape = tuple(int(s) for s in shape)
  named = ', '.join(f'mesh.{a}={s}' for a, s in zip(MESH_AXES, shape))
  if len(shape) != len(MESH_AXES):
    raise errors.ConfigError(f'mesh: expected {len(MESH_AXES)} sizes for {MESH_AXES}, got {shape}')
  if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise errors.ConfigError(f'mesh: sizes must be positive with at most one -1, got {named}')
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise errors.ConfigError(f'mesh: {named} cannot fill {num_devices} devices ({num_devices} is not a '
                       f'multiple of {known})')
    shape = tuple(num_devices // known if s == -1 else s for s in shape)
  if math.prod(shape) != num_devices:
    raise errors.ConfigError(f'mesh: {named} has {math.prod(shape)} devices but {num_devices} are '
                     'available; use -1 on one axis to fill')
  return shape


def make_mesh(mesh_cfg: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A Mesh with Auto axes ('data', 'fsdp', 'tensor') from a config with those three keys.

  Devices are laid out by `jax.experimental.mesh_utils` so that the innermost axes (tensor, then
  fsdp) land on the fastest interconnect; on CPU this is plain device order.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape([mesh_cfg[a] for a in MESH_AXES], len(devices))
  try:
    from jax.experimental import mesh_utils  # pylint: disable=g-import-not-at-top
    grid = mesh_utils.create_device_mesh(shape, devices=devices, allow_split_physical_axes=True)
  except (ValueError, NotImplementedError, AssertionError):
    grid = np.asarray(devices, dtype=object).reshape(shape)
  return Mesh(grid, MESH_AXES)


def rules_from_config(rules: Any) -> tuple[tuple[str, Any], ...]:
  """Turns config rules ([[name, axes], ...] with axes a str, list or None) into flax rules."""
  if rules is None:
    return DEFAULT_RULES
  out = []
  for rule in rules:
    if len(rule) != 2:
      raise errors.ConfigError(f'sharding.rules: each rule must be [logical_name, mesh_axes], got {rule!r}')
    name, axes = rule
    if isinstance(axes, (list, tuple)):
      axes = tuple(axes)
      bad = [a for a in axes if a not in MESH_AXES]
    else:
      bad = [] if axes is None or axes in MESH_AXES else [axes]
    if bad:
      raise errors.ConfigError(f'sharding.rules: {name!r} maps to unknown mesh axes {bad}; '
                       f'expected names from {MESH_AXES}')
    out.append((str(name), axes))
  return tuple(out)


def logical_shardings(logical_specs: Any, mesh: Mesh, rules) -> Any:
  """NamedShardings for a tree of logical PartitionSpecs (as from `nn.get_partition_spec`)."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def put_replicated(tree: Any, mesh: Mesh) -> Any:
  """Host arrays -> global arrays replicated on `mesh` (works with several processes)."""
  repl = replicated(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_callback(np.shape(x), repl, lambda idx: np.asarray(x)[idx]), tree)


def batch_sharding(mesh: Mesh, ndim: int = 1, stacked: bool = False) -> NamedSharding:
  """Leading dimension over data x fsdp, the rest replicated; `stacked`: a whole step axis comes first."""
  return NamedSharding(mesh, PartitionSpec(*([None] if stacked else []), BATCH_AXES, *([None] * (ndim - 1))))


def data_parallel_size(mesh: Mesh) -> int:
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def check_fsdp(shardings: Any, shapes: Any, mesh: Mesh, min_size: int = FSDP_MIN_SIZE) -> None:
  """Fails loudly when FSDP is on but a large parameter would be replicated over the fsdp axis.

  A rule typo (say 'embd') silently replicates whole weight matrices, which only shows up as an
  out-of-memory error on the largest run; this makes it a clear error on the smallest.
  """
  if mesh.shape['fsdp'] <= 1:
    return
  flat_shapes = jax.tree_util.tree_leaves_with_path(shapes)
  flat_shardings = jax.tree_util.tree_leaves(shardings)
  bad = []
  for (path, leaf), sharding in zip(flat_shapes, flat_shardings):
    if math.prod(leaf.shape) < min_size:
      continue
    used = {a for entry in sharding.spec if entry is not None
            for a in (entry if isinstance(entry, tuple) else (entry,))}
    if 'fsdp' not in used:
      bad.append(f'{jax.tree_util.keystr(path)} {tuple(leaf.shape)} spec={sharding.spec}')
  if bad:
    raise errors.ConfigError(f'sharding: mesh.fsdp={mesh.shape["fsdp"]} but {len(bad)} large parameter(s) '
                     f'are not sharded over fsdp (check sharding.rules maps "embed"): {bad[0]}'
                     + (f' and {len(bad) - 1} more' if len(bad) > 1 else ''))
