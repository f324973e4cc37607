"""Throughput benchmark of the VAR train step or of sampling, on whatever accelerator is present.

  python -m var_jax.bench train --depth 16 --batch 64 --dtype bfloat16 --steps 20 --json
  python -m var_jax.bench sample --depth 16 --batch 32 --json

`train` times the full optimizer step (forward, backward, AdamW) of the real engine on random token
inputs; `sample` times class-conditional generation with classifier-free guidance (batch doubled).
The tokenizer is a tiny random one: for tokens only its codebook and phi convolutions matter (both
set by --vocab and its 32 channels). Imports nothing from TFDS or grain.
"""
from __future__ import annotations

import json
import statistics
import time

from absl import flags
import jax
import numpy as np

from var_jax import cli
from var_jax.cli import compare
from var_jax import errors
from var_jax import flops
from var_jax.train import config as config_lib
from var_jax.train import engine as engine_lib
from var_jax.train import perf

PROG = 'var-bench'
MODES = ('train', 'sample', 'compare')


def _define_flags() -> None:
  flags.DEFINE_integer('depth', 16, 'VAR depth (width 64 x depth, heads = depth).', lower_bound=1)
  flags.DEFINE_integer('batch', 8, 'Global batch size.', lower_bound=1)
  flags.DEFINE_integer('vocab', 4096, 'Codebook size.', lower_bound=1)
  flags.DEFINE_list('patch-nums', '1,2,3,4,5,6,8,10,13,16', 'Scale sizes.')
  flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Compute dtype.')
  flags.DEFINE_integer('steps', 10, 'Timed steps (after one compiling step).', lower_bound=1)
  flags.DEFINE_list('mesh', '-1,1,1', 'data,fsdp,tensor (-1 fills).')
  flags.DEFINE_string('remat', 'none', 'model.remat_policy.')
  flags.DEFINE_string('attention', 'auto', 'model.attention.')
  flags.DEFINE_float('peak-tflops', None, 'Per-device peak TFLOP/s for MFU (default: table).')
  flags.DEFINE_bool('json', False, 'Print one JSON object instead of a table.')
  flags.DEFINE_string('official', None, 'compare: a checkout of github.com/FoundationVision/VAR (torch needed).')
  flags.DEFINE_enum('what', 'train', ['train', 'sample'], 'compare: the train step or sampling.')
  flags.DEFINE_integer('rounds', 5, 'compare: alternating rounds; each framework times --steps per round.',
                       lower_bound=1)


def _peak_bytes() -> int | None:
  stats = jax.devices()[0].memory_stats()
  return None if not stats else stats.get('peak_bytes_in_use')


def _summary(kind, engine, times, compile_s, flops_per_call, tokens_per_call, peak):
  median = statistics.median(times)
  n = jax.device_count()
  tflops_total = flops_per_call / median / 1e12
  return dict(
      mode=kind, device=jax.devices()[0].device_kind, num_devices=n,
      depth=engine.task.model.depth, batch=engine.config.batch_size,
      params=engine.num_params, dtype=engine.task.model.dtype,
      patch_nums=list(engine.task.patch_nums), vocab=engine.task.model.vocab_size,
      step_time_s=median, step_time_min_s=min(times), tokens_per_s=tokens_per_call / median,
      tflops_per_s=tflops_total, mfu=None if peak is None else tflops_total / n / peak,
      compile_time_s=compile_s, peak_bytes=_peak_bytes())


def bench_train(engine: engine_lib.Engine, steps: int, peak: float | None) -> dict:
  """Median wall time of the full optimizer step over `steps` steps (after compiling)."""
  state = engine.init_state()
  batches = engine.batches('train')
  batch = engine.global_batch(next(batches))
  compile_s = engine.compile_train_step(state, batch)
  state, metrics = engine.train_step(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    batch = engine.global_batch(next(batches))
    start = time.perf_counter()
    state, metrics = engine.train_step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  return _summary('train', engine, times, compile_s, engine.flops_per_step,
                  engine.tokens_per_step, peak)


def bench_sample(engine: engine_lib.Engine, steps: int, peak: float | None) -> dict:
  """Median wall time of generating one batch (CFG doubles the transformer's batch)."""
  from var_jax.models import sampling  # pylint: disable=g-import-not-at-top
  state = engine.init_state()
  sampler = sampling.make_sampler(engine.task.model, engine.task.tokenizer)
  labels = np.arange(engine.config.batch_size) % engine.task.model.num_classes
  rng = jax.random.key(0)
  start = time.perf_counter()
  jax.block_until_ready(sampler(state.params, state.frozen, labels, rng))
  first = time.perf_counter() - start
  times = []
  for i in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(sampler(state.params, state.frozen, labels, jax.random.fold_in(rng, i)))
    times.append(time.perf_counter() - start)
  # Forward FLOPs (a third of training's) for 2B rows: conditional and unconditional.
  flops_per_call = 2 * engine.config.batch_size * flops.train_flops_per_image(engine.task.model_kwargs) / 3
  return _summary('sample', engine, times, max(first - statistics.median(times), 0.0),
                  flops_per_call, engine.tokens_per_step, peak)


def _compare(f) -> None:
  """`compare`: the official code and var_jax side by side; the ratio official / var_jax is printed last."""
  setup = compare.Setup(mode=f.what, depth=f.depth, batch=f.batch, vocab=f.vocab,
                        patch_nums=tuple(int(p) for p in f['patch-nums'].value),
                        official=compare.check_official(f.official))
  result = compare.compare(setup, f.rounds, f.steps)
  if f.json:
    print(json.dumps(result))
    return
  for key, value in result.items():
    print(f'{key:>16}: {value}')
  print(f'official / var_jax ({f.what}, depth {f.depth}, batch {f.batch}): {result["ratio"]:.3f}')


def main(argv):
  f = flags.FLAGS
  if len(argv) != 2 or argv[1] not in MODES:
    raise errors.ConfigError(f'usage: python -m var_jax.bench {{{"|".join(MODES)}}} [--flags]')
  if argv[1] == 'compare':
    _compare(f)
    return
  cfg = perf.bench_config(depth=f.depth, batch=f.batch, vocab=f.vocab, patch_nums=f['patch-nums'].value,
                          dtype=f.dtype, steps=f.steps, mesh=f.mesh, remat=f.remat, attention=f.attention)
  engine = engine_lib.Engine(config_lib.resolve(cfg, jax.device_count()))
  peak = perf.peak_tflops(override=f['peak-tflops'].value)
  result = (bench_train if argv[1] == 'train' else bench_sample)(engine, f.steps, peak)
  if f.json:
    print(json.dumps(result))
  else:
    for key, value in result.items():
      print(f'{key:>16}: {value}')


def run():
  _define_flags()
  cli.run(main, prog=PROG)

