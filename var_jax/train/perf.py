"""Throughput figures: per-device peak FLOP/s and model FLOPs utilisation (MFU)."""
from __future__ import annotations

import jax

from var_jax.train import config as config_lib

# Dense bf16 peak TFLOP/s per device (vendor figures), matched by substring of `device_kind`, most
# specific first. MFU is reported against these whatever the compute dtype.
PEAK_TFLOPS = (
    ('H100 PCIe', 756.0),
    ('H100', 989.0),
    ('H200', 989.0),
    ('GH200', 989.0),
    ('B200', 2250.0),
    ('A100', 312.0),
    ('L4', 121.0),
    ('TPU v6 lite', 918.0),
    ('TPU v6e', 918.0),
    ('TPU v5p', 459.0),
    ('TPU v5 lite', 197.0),
    ('TPU v5e', 197.0),
    ('TPU v5', 459.0),
    ('TPU v4', 275.0),
    ('TPU v3', 123.0),
)


def peak_tflops(device: jax.Device | None = None, override: float | None = None) -> float | None:
  """Peak TFLOP/s of one device: `override` if given, else the table, else None (e.g. CPU)."""
  if override is not None:
    return float(override)
  device = jax.devices()[0] if device is None else device
  if device.platform == 'cpu':
    return None
  for fragment, peak in PEAK_TFLOPS:
    if fragment in device.device_kind:
      return peak
  return None


def throughput(flops_per_step: float, step_time_s: float, num_devices: int,
               peak: float | None) -> tuple[float, float | None]:
  """(achieved TFLOP/s per device, MFU or None when the peak is unknown)."""
  tflops = flops_per_step / step_time_s / num_devices / 1e12
  return tflops, (None if peak is None else tflops / peak)


def bench_config(*, depth: int, batch: int, vocab: int, patch_nums, dtype: str, steps: int,
                 mesh=(-1, 1, 1), remat: str = 'none', attention: str = 'auto'):
  """A VAR training config on in-memory random tokens with a tiny random tokenizer."""
  c = config_lib.base_config('var')
  c.data.name = 'synthetic_tokens'
  c.steps, c.batch_size = steps + 1, batch
  patch_nums = tuple(int(p) for p in patch_nums)
  c.model.update(dict(depth=depth, vocab_size=vocab, patch_nums=patch_nums, dtype=dtype,
                      remat_policy=remat, attention=attention))
  c.tokenizer.update(dict(vocab_size=vocab, patch_nums=patch_nums, ch=16, ch_mult=(1, 1),
                          num_res_blocks=1, norm_groups=8))
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = (int(m) for m in mesh)
  return c
