"""The one sampling driver: data parallel, per-index randomness; at evaluation scale, resumable chunks.

`DataParallelSampler.draw(labels, indices, seed)` samples any labels (`var-sample`, the demo, `var-orderings`);
a `Plan` (class-balanced labels) and `generate` cut an evaluation into chunk files (`var-evaluate`).

Sample i has label (i // per_class) % num_classes and key fold_in(key(seed), i), and its sampler row
depends on that key alone (`sampling.Sampler` with one key per row), so the images are the same
whatever the batch size, device count or process count.

Indices are cut into chunks of `chunk_size`; chunk c is written to OUT/chunk_{c:05d}.npz (`images`
uint8 (n, H, W, 3), `labels`, `indices`) by process c % process_count, which samples it on its
own devices (data parallel over a local mesh: sampling needs no communication). A chunk on disk
is never recomputed, so a killed evaluation resumes where it stopped. OUT/plan.json records what
the chunks are samples of (written with the first chunk, so a plan the sampler refuses leaves no trace);
resuming with another plan is an error rather than a mix.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Iterator, Mapping

import flax.linen as nn
import jax
import numpy as np

from var_jax import errors
from var_jax import sharding
from var_jax.models import sampling

PLAN_JSON = 'plan.json'


@dataclasses.dataclass(frozen=True)
class Plan:
  """What an evaluation samples; `knobs` are the sampler's (cfg, top_k, top_p, more_smooth)."""
  num_samples: int
  num_classes: int
  per_class: int = 1
  seed: int = 0
  chunk_size: int = 1000
  knobs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    group = self.num_classes * self.per_class
    if self.num_samples < 1 or self.per_class < 1 or self.chunk_size < 1:
      raise errors.ConfigError(f'num_samples ({self.num_samples}), per_class ({self.per_class}) and '
                               f'chunk_size ({self.chunk_size}) must be positive')
    if self.num_samples % group:
      raise errors.ConfigError(
          f'num_samples={self.num_samples} is not a multiple of num_classes x per_class = '
          f'{self.num_classes} x {self.per_class} = {group}, so the classes would not be balanced')

  @property
  def num_chunks(self) -> int:
    return -(-self.num_samples // self.chunk_size)

  def chunk_indices(self, c: int) -> np.ndarray:
    return np.arange(c * self.chunk_size, min((c + 1) * self.chunk_size, self.num_samples))

  def labels(self, indices: np.ndarray) -> np.ndarray:
    """Class-balanced labels: runs of `per_class` samples of one class, classes in turn."""
    return ((np.asarray(indices) // self.per_class) % self.num_classes).astype(np.int32)

  def to_json(self) -> dict[str, Any]:
    return dict(dataclasses.asdict(self), knobs=dict(self.knobs))


def sample_keys(seed: int, indices: np.ndarray) -> jax.Array:
  """fold_in(key(seed), i) for every index i: one key per sample, shape (n,)."""
  base = jax.random.key(seed)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(np.asarray(indices, np.uint32))


def to_uint8(images_NHWC: np.ndarray) -> np.ndarray:
  """[0, 1] floats -> uint8 as torchvision's save_image rounds (x * 255 + 0.5, clamped)."""
  return np.clip(np.asarray(images_NHWC, np.float32) * 255 + 0.5, 0, 255).astype(np.uint8)


def chunk_path(out_dir: str, c: int) -> str:
  return os.path.join(out_dir, f'chunk_{c:05d}.npz')


def read_chunk(path: str) -> dict[str, np.ndarray] | None:
  """The arrays of a chunk file, or None when it is absent or unreadable (cut short by a kill)."""
  try:
    with np.load(path) as f:
      return {k: f[k] for k in ('images', 'labels', 'indices')}
  except (OSError, ValueError, KeyError, EOFError):
    return None


def _write_chunk(path: str, **arrays: np.ndarray) -> None:
  tmp = f'{path}.tmp.npz'
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def check_plan(out_dir: str, plan: Plan) -> None:
  """ConfigError when OUT holds the samples of a different plan (its plan.json differs)."""
  path = os.path.join(out_dir, PLAN_JSON)
  if not os.path.exists(path):
    return
  with open(path) as f:
    have = json.load(f)
  want = json.loads(json.dumps(plan.to_json()))
  if have != want:
    changed = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
    raise errors.ConfigError(f'{out_dir} holds samples of another plan (differs in {changed}); '
                             'use a new output folder or delete it')


def _record_plan(out_dir: str, plan: Plan) -> None:
  """Writes OUT/plan.json (the same from every process) if it is not there yet."""
  path = os.path.join(out_dir, PLAN_JSON)
  if os.path.exists(path):
    return
  os.makedirs(out_dir, exist_ok=True)
  tmp = f'{path}.{os.getpid()}.tmp'
  with open(tmp, 'w') as f:
    json.dump(plan.to_json(), f, indent=1, sort_keys=True)
  os.replace(tmp, path)


class DataParallelSampler:
  """A `sampling.Sampler` whose batches are split over a mesh of this process's devices.

  Params are replicated on the mesh; labels and per-sample keys are sharded along the batch, so
  the jitted steps run data parallel. `batch_size` must be a multiple of the device count.
  """

  def __init__(self, sampler: sampling.Sampler, var_params, vae_params, batch_size: int,
               devices=None):
    devices = list(jax.local_devices() if devices is None else devices)
    if batch_size < 1 or batch_size % len(devices):
      raise errors.ConfigError(f'batch_size={batch_size} must be a positive multiple of the '
                               f'{len(devices)} local devices')
    self.mesh = sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1), devices)
    self.batch_size = batch_size
    self.sampler = sampler
    repl = sharding.replicated(self.mesh)
    self.var_params = jax.device_put(var_params, repl)
    self.vae_params = jax.device_put(vae_params, repl)
    self._rows = sharding.batch_sharding(self.mesh)

  def __call__(self, labels_B: np.ndarray, keys_B: jax.Array, **knobs) -> tuple[list[np.ndarray], np.ndarray]:
    """(tokens [B, pn²] per scale, uint8 images (B, H, W, 3)) for B = batch_size labels and keys."""
    labels = jax.device_put(np.asarray(labels_B, np.int32), self._rows)
    keys = jax.device_put(keys_B, self._rows)
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(sharding.DEFAULT_RULES):
      idx, img = self.sampler(self.var_params, self.vae_params, labels, keys, **knobs)
    return [np.asarray(x) for x in idx], to_uint8(img)

  def draw(self, labels_N: np.ndarray, indices_N: np.ndarray, seed: int,
           **knobs) -> tuple[list[np.ndarray], np.ndarray]:
    """(tokens per scale, uint8 images) of sample i = (labels_N[i], key fold_in(key(seed), indices_N[i])), in
    batches; the last batch is padded (with later indices) to full size, so nothing recompiles."""
    labels_N, indices_N = np.asarray(labels_N, np.int32), np.asarray(indices_N)
    parts = []
    for lo in range(0, len(indices_N), self.batch_size):
      idx, labels = indices_N[lo:lo + self.batch_size], labels_N[lo:lo + self.batch_size]
      pad = self.batch_size - len(idx)
      tokens, images = self(np.concatenate([labels, np.repeat(labels[-1:], pad)]),
                            sample_keys(seed, np.concatenate([idx, idx[-1] + 1 + np.arange(pad)])), **knobs)
      parts.append(([t[:len(idx)] for t in tokens], images[:len(idx)]))
    tokens = [np.concatenate(scale) for scale in zip(*(p[0] for p in parts))]
    return tokens, np.concatenate([p[1] for p in parts])

  def sample(self, plan: Plan, indices: np.ndarray) -> np.ndarray:
    """uint8 images of a plan's `indices`."""
    return self.draw(plan.labels(indices), indices, plan.seed, **plan.knobs)[1]


def generate(dp_sampler: DataParallelSampler, plan: Plan, out_dir: str, *, progress: bool = True,
             process_index: int | None = None, process_count: int | None = None) -> dict[str, int]:
  """Samples this process's missing chunks into `out_dir`; returns counts of chunks sampled and kept.

  Every process calls this with the same plan; chunk c belongs to process c % process_count. The
  caller waits for all processes (a barrier) before reading the chunks of the others.
  """
  import tqdm  # pylint: disable=g-import-not-at-top
  p = jax.process_index() if process_index is None else process_index
  n = jax.process_count() if process_count is None else process_count
  check_plan(out_dir, plan)  # every process refuses another plan's folder
  mine = [c for c in range(plan.num_chunks) if c % n == p]
  todo = [c for c in mine if read_chunk(chunk_path(out_dir, c)) is None]
  total = sum(len(plan.chunk_indices(c)) for c in todo)
  bar = tqdm.tqdm(total=total, unit='img', desc=f'sampling (process {p})', disable=not progress,
                  dynamic_ncols=True)
  start = time.perf_counter()
  for c in todo:
    indices = plan.chunk_indices(c)
    images = dp_sampler.sample(plan, indices)
    _record_plan(out_dir, plan)  # with the first chunk: a plan refused by the sampler leaves no trace
    _write_chunk(chunk_path(out_dir, c), images=images, labels=plan.labels(indices), indices=indices)
    bar.update(len(indices))
    bar.set_postfix_str(f'{bar.n / max(time.perf_counter() - start, 1e-9):.1f} img/s')
  bar.close()
  return dict(sampled=len(todo), kept=len(mine) - len(todo))


def iter_chunks(out_dir: str, plan: Plan) -> Iterator[dict[str, np.ndarray]]:
  """The chunks of `plan` in index order; ConfigError naming the first one missing."""
  for c in range(plan.num_chunks):
    chunk = read_chunk(chunk_path(out_dir, c))
    if chunk is None or not np.array_equal(chunk['indices'], plan.chunk_indices(c)):
      raise errors.ConfigError(f'{chunk_path(out_dir, c)}: missing or not chunk {c} of the plan; '
                               'rerun the evaluation to sample it')
    yield chunk
