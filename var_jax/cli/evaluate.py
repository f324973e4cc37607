"""`python -m var_jax.evaluate`: sample at evaluation scale and measure FID/FD, IS, precision/recall.

  # VAR's protocol: 50 per class, cfg 1.5, top-k 900, top-p 0.96, InceptionV3 features, ADM reference
  python -m var_jax.evaluate --var=var_d16.pth --tokenizer=vae_ch160v4096z32.pth --num_samples=50000 \\
      --per_class=50 --features=inception:pt_inception-2015-12-05-6726825d.pth \\
      --reference=VIRTUAL_imagenet256_labeled.npz --out=eval/d16 --adm_npz=eval/d16/samples_adm.npz
  # a training run, measured with the synthetic-shapes classifier
  python -m var_jax.evaluate --workdir=runs/d4 --num_samples=1000 --features=shapes:CLASSIFIER \\
      --reference=shapes_ref.npz --out=runs/d4/quality
  # images that already exist: two folders (or .npz files with arr_0, or a mu/sigma reference)
  python -m var_jax.evaluate --images=DIR_OR_NPZ --reference=DIR_OR_NPZ --features=inception:PATH --out=DIR

Samples go to OUT/samples/chunk_XXXXX.npz (see var_jax/eval/generate.py); rerunning the same command
after a kill samples only the missing chunks. Several processes (launch/local.sh, or a pod with
--coordinator_address/--num_processes/--process_id) each sample their share of the chunks; process 0
then measures. OUT/metrics.json holds fid, is_mean, is_std, precision, recall, sample_accuracy (None
where the extractor or the reference cannot give it or it came out NaN; `notes` say why), num_images, the
sampling knobs and seconds. Without --features only the samples are written (no metrics.json).
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Sequence

from absl import flags
from absl import logging

from var_jax import cli
from var_jax import errors
from var_jax import paths
from var_jax.cli import sampling_flags

PROG = 'var-evaluate'
SAMPLES = 'samples'
METRICS_JSON = 'metrics.json'


def _define_flags() -> None:
  sampling_flags.define_source()
  sampling_flags.define_knobs(seed_help='Sample i uses fold_in(key(seed), i).',
                              more_smooth='Gumbel-softmax visualisation mode (not the FID protocol).')
  flags.DEFINE_string('images', None, 'Evaluate these images instead of sampling: a folder of PNG/JPEG '
                      'or an .npz with arr_0 uint8 (N, H, W, 3) (and arr_1 labels).')
  flags.DEFINE_integer('num_samples', 50000, 'Images to sample.')
  flags.DEFINE_integer('per_class', 1, 'Consecutive samples per class (labels (i // per_class) % classes); '
                       'num_samples must be a multiple of classes x per_class.')
  flags.DEFINE_integer('batch_size', 64, 'Images per sampler call on each process (a multiple of its '
                       'device count).')
  flags.DEFINE_integer('chunk_size', 1000, 'Images per chunk file (the unit of resumption).')
  flags.DEFINE_string('features', None, 'Feature extractor NAME[:ARG], e.g. inception:WEIGHTS.pth.')
  flags.DEFINE_integer('feature_batch_size', 64, 'Images per extractor call.')
  flags.DEFINE_string('reference', None, 'Reference images (folder, .npz with arr_0) or ADM .npz with mu/sigma.')
  flags.DEFINE_string('out', None, 'Output folder (samples/, metrics.json).')
  flags.DEFINE_string('adm_npz', None, 'Also write the samples as one ADM .npz (arr_0 images, arr_1 labels).')
  flags.DEFINE_bool('progress', True, 'Show progress bars.')
  flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (multi-process runs).')
  flags.DEFINE_integer('num_processes', None, 'Number of processes.')
  flags.DEFINE_integer('process_id', None, 'Index of this process.')


def _check_flags(f) -> None:
  """ConfigError (one line) for flags that cannot work, before anything is loaded."""
  sampling_flags.check(f, others=('images',))
  if not f.out:
    raise errors.ConfigError('--out is required')
  if f.reference and not f.features:
    raise errors.ConfigError('--reference needs --features (the extractor both sides are measured with)')
  if f.images and not f.features:
    raise errors.ConfigError('--images needs --features')
  paths.check_folder(f.out, '--out')
  for name in ('num_samples', 'per_class', 'batch_size', 'chunk_size', 'feature_batch_size'):
    if getattr(f, name) < 1:
      raise errors.ConfigError(f'--{name} must be positive, got {getattr(f, name)}')


def _extractor(spec: str, batch_size: int):
  from var_jax.eval import features  # pylint: disable=g-import-not-at-top
  try:
    return features.get_extractor(spec, batch_size)
  except FileNotFoundError as e:
    raise errors.WeightsError(f'--features={spec}: {e}') from None
  except ValueError as e:
    raise errors.ConfigError(f'--features={spec}: {e}') from None


def _sample(f, out_dir: str):
  """Samples this process's chunks of the plan the flags describe; returns (plan, knobs, seconds)."""
  import jax  # pylint: disable=g-import-not-at-top
  from var_jax.eval import generate  # pylint: disable=g-import-not-at-top
  gen = sampling_flags.load(f)
  knobs = sampling_flags.knobs(f, gen)
  plan = generate.Plan(num_samples=f.num_samples, num_classes=gen.num_classes, per_class=f.per_class,
                       seed=f.seed, chunk_size=f.chunk_size, knobs=knobs)
  dp = gen.driver(f.batch_size)
  start = time.perf_counter()
  counts = generate.generate(dp, plan, out_dir, progress=f.progress)
  logging.info('process %d: sampled %d chunks, kept %d from an earlier run', jax.process_index(),
               counts['sampled'], counts['kept'])
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices('var_jax.evaluate: samples written')
  return plan, knobs, time.perf_counter() - start


def _write_adm_npz(path: str, batches) -> None:
  import numpy as np  # pylint: disable=g-import-not-at-top
  images, labels = zip(*batches)
  arrays = {'arr_0': np.concatenate(images)}
  if all(l is not None for l in labels):
    arrays['arr_1'] = np.concatenate(labels)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f'{path}.tmp.npz'
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def _null_non_finite(record: dict) -> list[str]:
  """Sets NaN and infinite figures of `record` to None (JSON has no NaN); returns a note for each."""
  bad = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
  notes = [f'{k} came out {record[k]} (not finite); written as null' for k in bad]
  record.update(dict.fromkeys(bad))
  return notes


def main(argv: Sequence[str]) -> None:
  cli.no_positional(argv)
  f = flags.FLAGS
  _check_flags(f)
  from var_jax.train import distributed  # pylint: disable=g-import-not-at-top
  distributed.initialize(f.coordinator_address, f.num_processes, f.process_id)
  import jax  # pylint: disable=g-import-not-at-top
  from var_jax.eval import generate  # pylint: disable=g-import-not-at-top
  from var_jax.eval import quality  # pylint: disable=g-import-not-at-top

  start = time.perf_counter()
  extractor = _extractor(f.features, f.feature_batch_size) if f.features else None
  ref, notes = quality.reference(f.reference, extractor) if f.reference else (None, [])
  record = dict(dict.fromkeys(quality.METRIC_KEYS), features=f.features, reference=f.reference)
  if f.images:
    batches = lambda: quality.image_batches(f.images)
    record.update(images=f.images, seconds_sampling=0.0)
  else:
    plan, knobs, seconds = _sample(f, os.path.join(f.out, SAMPLES))
    batches = lambda: quality.chunk_batches(generate.iter_chunks(os.path.join(f.out, SAMPLES), plan))
    record.update(knobs, num_samples=f.num_samples, per_class=f.per_class, seed=f.seed,
                  num_images=f.num_samples, seconds_sampling=seconds)
  if jax.process_index():
    return
  if f.adm_npz:
    _write_adm_npz(f.adm_npz, batches())
  if extractor is None:
    print(f'wrote {f.num_samples} samples to {os.path.join(f.out, SAMPLES)} (no --features: nothing measured)')
    return
  samples = quality.featurise(extractor, batches())
  record.update(quality.measure(samples, ref, extractor.num_classes))
  if samples.labels is None and extractor.num_classes:
    notes.append('sample_accuracy needs the class of every image (arr_1 in an .npz); none given')
  elif record['sample_accuracy'] is None and extractor.num_classes:
    notes.append(f'sample_accuracy: labels up to {int(samples.labels.max())} are not classes of the '
                 f'extractor ({extractor.num_classes})')
  notes += _null_non_finite(record)
  record.update(notes=notes, seconds=time.perf_counter() - start)
  os.makedirs(f.out, exist_ok=True)
  path = os.path.join(f.out, METRICS_JSON)
  with open(path + '.tmp', 'w') as out:
    json.dump(record, out, indent=1, allow_nan=False)
  os.replace(path + '.tmp', path)
  shown = {k: record.get(k) for k in ('fid', 'is_mean', 'precision', 'recall', 'sample_accuracy', 'num_images')}
  print(f'wrote {path}: ' + ', '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}'
                                      for k, v in shown.items()))
  for note in notes:
    logging.warning('%s', note)


def run() -> None:
  _define_flags()
  cli.run(main, prog=PROG)

