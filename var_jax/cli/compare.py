"""Side by side with the official code: `python -m var_jax.bench compare --official DIR`.

The official VAR (a checkout of FoundationVision/VAR, torch installed) and var_jax run in two persistent worker
processes on the same machine, with the same configuration: depth d (width 64 d, heads d), a batch of random
tokens over `patch_nums`, a vocabulary of `vocab` codes of 32 channels, float32. Both workers build and warm up
first (var_jax compiles); then the parent alternates them, round by round (the first framework of each round
alternates too), each timing `steps` steps while the other waits, and reports medians over all timed steps.

  train   one full optimizer step from token inputs: the tokenizer's teacher-forcing input, forward,
          cross-entropy (mean over the L tokens), backward, global-norm clipping, AdamW; the official side is
          `VAR.forward` with `torch.optim.AdamW` and `clip_grad_norm_`, as `VARTrainer.train_step` runs it
          without mixed precision (the image encoding, the same on both sides, is left out).
  sample  one batch of class-conditional images with classifier-free guidance (cfg 1.5, top-k 900 capped at the
          vocabulary, top-p 0.96)
          and the tokenizer's decoder: `VAR.autoregressive_infer_cfg` against `var_jax.models.sampling`.

The tokenizer is a small random one on both sides (only its codebook and phi convolutions enter a train step).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
import types
from typing import Any

from var_jax import errors

MODES = ('train', 'sample')
OFFICIAL, VAR_JAX = 'official', 'var_jax'
_SWITCH_PAUSE_S = 0.5  # lets the idle worker's thread pool go quiet before the other one is timed


# The random tokenizer of both sides: the official VQVAE layout with ch 32 (its decoder runs when sampling).
OFFICIAL_TOKENIZER = dict(ch=32, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, norm_groups=32, z_channels=32)


@dataclasses.dataclass(frozen=True)
class Setup:
  mode: str
  depth: int
  batch: int
  vocab: int
  patch_nums: tuple[int, ...]
  official: str


# ---- the official side (runs in the torch worker) ---------------------------------------------------------


def _import_official(checkout: str):
  """The official `models` package from a checkout; huggingface_hub (used only for hub uploads) may be absent."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise errors.MissingDependencyError('compare: the official code needs torch: pip install '
                                        "'var_jax[torch]'") from None
  if importlib.util.find_spec('huggingface_hub') is None:  # its mixin only adds hub upload/download methods
    sys.modules['huggingface_hub'] = types.SimpleNamespace(PyTorchModelHubMixin=type('PyTorchModelHubMixin', (), {}))
  sys.path.insert(0, checkout)
  import models  # pylint: disable=g-import-not-at-top
  return torch, models


def official_runner(s: Setup):
  """A no-argument function running one official train step (or sampling call) on fixed random inputs."""
  torch, models = _import_official(s.official)
  torch.set_num_threads(os.cpu_count() or 1)
  torch.manual_seed(0)
  vae, var = models.build_vae_var(device='cpu', patch_nums=s.patch_nums, V=s.vocab, Cvae=32, ch=32,
                                  num_classes=1000, depth=s.depth, shared_aln=False, attn_l2_norm=True,
                                  flash_if_available=False, fused_if_available=False)
  label_B = torch.randint(0, 1000, (s.batch,))
  if s.mode == 'sample':
    var.eval()

    def sample():
      with torch.inference_mode():
        var.autoregressive_infer_cfg(B=s.batch, label_B=label_B, cfg=1.5, top_k=min(900, s.vocab), top_p=0.96,
                                    g_seed=0)
    return sample

  idx_Bl = [torch.randint(0, s.vocab, (s.batch, p * p)) for p in s.patch_nums]
  gt_BL = torch.cat(idx_Bl, dim=1)
  params = [p for p in var.parameters() if p.requires_grad]
  try:
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05, fused=True)
  except (RuntimeError, TypeError):  # fused AdamW is CUDA-only in some builds
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05, foreach=True)
  loss_fn = torch.nn.CrossEntropyLoss(reduction='none')
  var.train()

  def step():
    x_BLCv = vae.quantize.idxBl_to_var_input(idx_Bl)
    logits_BLV = var(label_B, x_BLCv)
    loss = loss_fn(logits_BLV.reshape(-1, s.vocab), gt_BL.reshape(-1)).view(s.batch, -1).mean(-1).mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 2.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
  return step


# ---- var_jax's side (runs in the jax worker) ----------------------------------------------------------------


def var_jax_runner(s: Setup):
  """A no-argument function running one var_jax train step (or sampling call), compiled before it returns."""
  import jax  # pylint: disable=g-import-not-at-top
  from var_jax.models import sampling  # pylint: disable=g-import-not-at-top
  from var_jax.train import config as config_lib  # pylint: disable=g-import-not-at-top
  from var_jax.train import engine as engine_lib  # pylint: disable=g-import-not-at-top
  from var_jax.train import perf  # pylint: disable=g-import-not-at-top
  cfg = perf.bench_config(depth=s.depth, batch=s.batch, vocab=s.vocab, patch_nums=s.patch_nums,
                           dtype='float32', steps=1000)
  cfg.tokenizer.update(OFFICIAL_TOKENIZER)  # the official side's tokenizer layout (its decoder runs in sampling)
  engine = engine_lib.Engine(config_lib.resolve(cfg, jax.device_count()))
  box = {'state': engine.init_state()}
  if s.mode == 'sample':
    sampler = sampling.make_sampler(engine.task.model, engine.task.tokenizer)
    labels = jax.numpy.arange(s.batch) % 1000
    knobs = dict(cfg=1.5, top_k=min(900, s.vocab), top_p=0.96)
    run = lambda: jax.block_until_ready(sampler(box['state'].params, box['state'].frozen, labels,
                                                jax.random.key(0), **knobs))
  else:
    batch = engine.global_batch(next(engine.batches('train')))

    def run():
      box['state'], metrics = engine.train_step(box['state'], batch)
      jax.block_until_ready(metrics)
  run()  # compiles
  return run


# ---- the worker protocol ------------------------------------------------------------------------------------


def _worker(framework: str, setup_json: str) -> None:
  """Builds and warms up one side, prints {'ready': seconds}, then answers 'N' with the N step times."""
  s = Setup(**{**json.loads(setup_json), 'patch_nums': tuple(json.loads(setup_json)['patch_nums'])})
  start = time.perf_counter()
  run = official_runner(s) if framework == OFFICIAL else var_jax_runner(s)
  run()  # a second warm-up step: first-touch allocations
  print(json.dumps({'ready': time.perf_counter() - start}), flush=True)
  for line in sys.stdin:
    times = []
    for _ in range(int(line)):
      t0 = time.perf_counter()
      run()
      times.append(time.perf_counter() - t0)
    print(json.dumps({'times': times}), flush=True)


class _Worker:
  """A framework's worker process, driven over stdin/stdout."""

  def __init__(self, framework: str, s: Setup):
    env = dict(os.environ)
    # One host device using every core, whatever fake-device count the caller's environment asks for.
    env['XLA_FLAGS'] = ' '.join(f for f in env.get('XLA_FLAGS', '').split()
                                if not f.startswith('--xla_force_host_platform_device_count'))
    self.framework = framework
    self._proc = subprocess.Popen(
        [sys.executable, '-m', 'var_jax.cli.compare', framework, json.dumps(dataclasses.asdict(s))],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    self.ready_s = self._read()['ready']

  def _read(self) -> dict:
    while True:
      line = self._proc.stdout.readline()
      if not line:
        err = self._proc.stderr.read().strip().splitlines()
        raise errors.ConfigError(f'compare: the {self.framework} worker failed: {err[-1] if err else "no output"}')
      if line.startswith('{'):
        return json.loads(line)

  def time(self, steps: int) -> list[float]:
    self._proc.stdin.write(f'{steps}\n')
    self._proc.stdin.flush()
    return self._read()['times']

  def close(self) -> None:
    self._proc.stdin.close()
    self._proc.wait(timeout=60)


def check_official(path: str | None) -> str:
  """The official checkout's path, or a one-line error saying what is missing."""
  if not path:
    raise errors.ConfigError('compare: --official is required: a checkout of github.com/FoundationVision/VAR')
  if not os.path.isfile(os.path.join(path, 'models', 'var.py')) or not os.path.isfile(os.path.join(path,
                                                                                                   'dist.py')):
    raise errors.ConfigError(f'compare: --official={path} is not a checkout of FoundationVision/VAR (no '
                             'models/var.py and dist.py)')
  if importlib.util.find_spec('torch') is None:
    raise errors.MissingDependencyError("compare: the official code needs torch: pip install 'var_jax[torch]'")
  return os.path.abspath(path)


def compare(s: Setup, rounds: int, steps: int) -> dict[str, Any]:
  """Alternating timed rounds of both frameworks; medians, minima and official / var_jax."""
  workers = {OFFICIAL: _Worker(OFFICIAL, s), VAR_JAX: _Worker(VAR_JAX, s)}
  times = {name: [] for name in workers}
  try:
    for r in range(rounds):
      for name in (OFFICIAL, VAR_JAX) if r % 2 == 0 else (VAR_JAX, OFFICIAL):
        time.sleep(_SWITCH_PAUSE_S)
        times[name] += workers[name].time(steps)
  finally:
    for w in workers.values():
      w.close()
  medians = {name: statistics.median(t) for name, t in times.items()}
  return dict(mode=s.mode, depth=s.depth, batch=s.batch, vocab=s.vocab, patch_nums=list(s.patch_nums),
              rounds=rounds, steps_per_round=steps, official_s=medians[OFFICIAL], var_jax_s=medians[VAR_JAX],
              official_min_s=min(times[OFFICIAL]), var_jax_min_s=min(times[VAR_JAX]),
              official_setup_s=workers[OFFICIAL].ready_s, var_jax_setup_s=workers[VAR_JAX].ready_s,
              ratio=medians[OFFICIAL] / medians[VAR_JAX])


if __name__ == '__main__':
  _worker(sys.argv[1], sys.argv[2])
