"""Official state dicts as numpy: `.pth`/`.npz` files, key maps onto Flax params, and fingerprints.

A model's mapping is a `KeyMap`: regex rules that turn a Flax module path into the official module name, plus
the official buffers that are not parameters. Leaves map by name (`kernel`/`scale`/`embedding` -> `weight`,
`bias` -> `bias`, others unchanged); conv kernels go HWIO <-> OIHW and dense kernels (in, out) <-> (out, in).
Expected names and shapes come from the model's abstract params, so any configuration converts.
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Any, Callable, Mapping, Sequence

import flax
import numpy as np

from var_jax import errors

StateDict = dict[str, np.ndarray]
Params = dict[str, Any]

_LEAF_NAMES = {'kernel': 'weight', 'scale': 'weight', 'embedding': 'weight', 'bias': 'bias'}
_MAX_LISTED = 8  # keys named per kind of mismatch in an error line


@dataclasses.dataclass(frozen=True)
class KeyMap:
  """How one model's Flax params correspond to its official state dict.

  Attributes:
    rules: (pattern, replacement) regex substitutions applied in order to the Flax module path joined with
      '/'; '/' then becomes '.'.
    buffers: official keys that hold no parameter (e.g. statistics), each with a factory for its default
      value; they are carried through, never shape-checked.
  """
  rules: Sequence[tuple[str, str]]
  buffers: Mapping[str, Callable[[], np.ndarray]] = dataclasses.field(default_factory=dict)

  def official_key(self, path: tuple[str, ...]) -> str:
    module = '/'.join(path[:-1])
    for pattern, replacement in self.rules:
      module = re.sub(pattern, replacement, module)
    # Raw parameters (no Linen layer) keep their own name, e.g. `pos_start`.
    leaf = _LEAF_NAMES.get(path[-1], path[-1])
    return f"{module.replace('/', '.')}.{leaf}" if module else leaf


def _official_shape(shape: tuple[int, ...], leaf: str) -> tuple[int, ...]:
  if leaf == 'kernel' and len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  if leaf == 'kernel' and len(shape) == 2:
    return (shape[1], shape[0])
  return tuple(shape)


def _to_official(x: np.ndarray, leaf: str) -> np.ndarray:
  if leaf == 'kernel' and x.ndim == 4:
    return np.transpose(x, (3, 2, 0, 1))  # conv HWIO -> OIHW
  if leaf == 'kernel' and x.ndim == 2:
    return np.transpose(x)  # dense (in, out) -> (out, in)
  return x


def _from_official(x: np.ndarray, leaf: str) -> np.ndarray:
  if leaf == 'kernel' and x.ndim == 4:
    return np.transpose(x, (2, 3, 1, 0))  # OIHW -> HWIO
  if leaf == 'kernel' and x.ndim == 2:
    return np.transpose(x)
  return x


def flat_leaves(tree: Params) -> dict[tuple[str, ...], Any]:
  return {tuple(k): v for k, v in flax.traverse_util.flatten_dict(tree).items()}


def listed(keys: Sequence[str]) -> str:
  """'a, b, c (and 12 more)': a list short enough for a one-line error."""
  keys = list(keys)
  more = f' (and {len(keys) - _MAX_LISTED} more)' if len(keys) > _MAX_LISTED else ''
  return ', '.join(keys[:_MAX_LISTED]) + more


def state_dict_to_params(state_dict: Mapping[str, Any], template: Params, keymap: KeyMap,
                         what: str) -> tuple[Params, StateDict]:
  """Official state dict -> (Flax params shaped like `template`, buffers).

  Args:
    state_dict: official key -> array.
    template: Flax params tree of arrays or ShapeDtypeStructs (the expected layout).
    keymap: the model's KeyMap.
    what: names the source in errors (e.g. the file path).

  Raises:
    errors.WeightsError naming the missing, unexpected and mis-shaped keys.
  """
  expected = {keymap.official_key(path): (path, leaf) for path, leaf in flat_leaves(template).items()}
  missing = sorted(set(expected) - set(state_dict))
  unexpected = sorted(set(state_dict) - set(expected) - set(keymap.buffers))
  flat, misshaped = {}, []
  for key, (path, leaf) in expected.items():
    if key not in state_dict:
      continue
    want = _official_shape(tuple(leaf.shape), path[-1])
    if tuple(np.shape(state_dict[key])) != want:
      misshaped.append(f'{key} {tuple(np.shape(state_dict[key]))} (expected {want})')
      continue
    flat[path] = _from_official(np.asarray(state_dict[key], np.float32), path[-1])
  problems = [f'{len(keys)} {name}: {listed(keys)}' for name, keys in
              (('missing', missing), ('unexpected', unexpected), ('mis-shaped', misshaped)) if keys]
  if problems:
    raise errors.WeightsError(f'{what} does not match the model: ' + '; '.join(problems))
  buffers = {k: np.asarray(state_dict[k]) if k in state_dict else default()
             for k, default in keymap.buffers.items()}
  return flax.traverse_util.unflatten_dict(flat), buffers


def params_to_state_dict(params: Params, keymap: KeyMap,
                         buffers: Mapping[str, np.ndarray] | None = None) -> StateDict:
  """Flax params (+ buffers, defaults where absent) -> official state dict of numpy."""
  out = {keymap.official_key(path): _to_official(np.asarray(leaf), path[-1])
         for path, leaf in flat_leaves(params).items()}
  buffers = dict(buffers or {})
  for key, default in keymap.buffers.items():
    out[key] = np.asarray(buffers.pop(key)) if key in buffers else default()
  if buffers:
    raise errors.WeightsError(f'unknown buffers for this model: {sorted(buffers)}')
  return out


def read_state_dict(path: str) -> StateDict:
  """Reads an official `.pth` (needs torch) or `.npz` state dict as numpy arrays."""
  if not path.endswith(('.pth', '.npz')):
    raise errors.WeightsError(f'{path}: expected a .pth or .npz state dict')
  try:
    if path.endswith('.npz'):
      with np.load(path) as data:
        return {k: data[k] for k in data.files}
    state = _torch_load(path)
  except FileNotFoundError:
    raise errors.WeightsError(f'{path}: no such file') from None
  except errors.VarJaxError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # torch/numpy raise anything for a bad file
    raise errors.WeightsError(f'{path}: not a readable state dict ({type(e).__name__}: '
                              f'{str(e).splitlines()[0] if str(e) else "no detail"})') from None
  if not isinstance(state, Mapping) or not all(hasattr(v, 'detach') for v in state.values()):
    raise errors.WeightsError(f'{path}: expected a state dict (key -> tensor), got {type(state).__name__}')
  return {k: v.detach().cpu().numpy() for k, v in state.items()}


def _torch_load(path: str):
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise errors.MissingDependencyError(
        f'{path} is a PyTorch checkpoint and reading it needs torch: install the torch extra '
        "(pip install 'var_jax[torch]') or use a .npz with the same keys") from None
  return torch.load(path, map_location='cpu', weights_only=True)


def write_state_dict(path: str, state_dict: Mapping[str, np.ndarray]) -> None:
  """Writes a state dict as `.npz`, or as `.pth` (needs torch) with torch.save."""
  if path.endswith('.npz'):
    np.savez(path, **state_dict)
  elif path.endswith('.pth'):
    import torch  # pylint: disable=g-import-not-at-top
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_dict.items()}, path)
  else:
    raise errors.WeightsError(f'{path}: expected a .pth or .npz file name')


def fingerprint(params: Params) -> str:
  """Short stable hash of a params tree (names, shapes, dtypes and values)."""
  digest = hashlib.sha256()
  for path, leaf in sorted(flat_leaves(params).items()):
    leaf = np.ascontiguousarray(np.asarray(leaf))
    digest.update(f'{"/".join(path)}:{leaf.shape}:{leaf.dtype};'.encode())
    digest.update(leaf.tobytes())
  return digest.hexdigest()[:16]
