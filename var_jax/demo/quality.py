r"""The demo's sample stage: class-conditional samples of every size of the sweep, scored by the shapes classifier.

  python -m var_jax.demo.quality --out=demo_out [--samples_per_class=32 --cfg=1.5]

Reads OUT/sweep (results.csv and the runs), OUT/classifier/classifier (the `shapes:DIR` feature extractor) and
the tokenizer run's data config (for the held-out images). Every size draws the same class-balanced labels with
the same seed. Writes OUT/samples/RUN_ID.npz per size, and for the largest model OUT/samples/samples.npz
(`images` (N, H, W, 3) uint8, `labels` (N,), `class_names`) and samples.png (one row per class, the same images);
OUT/samples/quality.json holds per size the Frechet distance of the classifier's features to those of the
held-out images, the sample accuracy (per class too), and the FD of as many real training images (the floor a
perfect model would reach with this many samples).
"""
import json
import os
import pathlib

from absl import flags
import numpy as np

from var_jax import cli
from var_jax.cli import sample
from var_jax.cli import sampling_flags
from var_jax.generate import generator
from var_jax.train.rundir import RunDir

PROG = 'var-demo-quality'


def _real_images(data_cfg: dict, split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
  from var_jax.data import sources  # pylint: disable=g-import-not-at-top
  src = sources.open_source(data_cfg, split)
  picked = [src.records[i] for i in range(min(n, len(src.records)))]
  return (np.stack([r[src.image_key] for r in picked]).astype(np.uint8),
          np.asarray([r[src.label_key] for r in picked]))


def _sample_run(run_dir: pathlib.Path, labels: np.ndarray, f) -> np.ndarray:
  """uint8 samples of `labels` from a sweep run (sample i with fold_in(key(seed), i), as every command)."""
  gen = generator.from_run(RunDir(run_dir))
  return gen.driver(f.batch_size).draw(labels, np.arange(len(labels)), f.seed, **sampling_flags.knobs(f, gen))[1]


def main(argv):
  cli.no_positional(argv)
  sampling_flags.check_knobs(flags.FLAGS)
  from var_jax.demo import stages  # pylint: disable=g-import-not-at-top
  from var_jax.eval import features  # pylint: disable=g-import-not-at-top
  from var_jax.eval import metrics  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  out = pathlib.Path(f.out)
  samples_dir = out / 'samples'
  samples_dir.mkdir(parents=True, exist_ok=True)
  rows = [r for r in stages.results(out / 'sweep') if r['status'] == 'done']
  data_cfg = RunDir(out / 'tokenizer').config_json()['data']
  extractor = features.get_extractor(f'shapes:{out / "classifier" / "classifier"}', batch_size=f.batch_size)
  class_names = list(extractor.class_names)

  num_classes = len(class_names)
  labels = np.repeat(np.arange(num_classes, dtype=np.int32), f.samples_per_class)
  real_eval, _ = _real_images(data_cfg, data_cfg['eval_split'], int(data_cfg['num_eval']))
  real_feats, _ = extractor(real_eval)
  real_train, _ = _real_images(data_cfg, data_cfg['train_split'], len(labels))
  floor = metrics.frechet_distance(real_feats, extractor(real_train)[0])
  print(f'held-out features: {len(real_eval)} images; FD of {len(real_train)} training images: {floor:.4f}',
        flush=True)

  knobs = dict(cfg=f.cfg, top_k=f.top_k, top_p=f.top_p, more_smooth=False)
  scored = []
  for i, row in enumerate(rows):
    images = _sample_run(out / 'sweep' / row['run_id'], labels, f)
    print(f'sampled images {(i + 1) * len(labels)}/{len(rows) * len(labels)}', flush=True)
    np.savez(samples_dir / f'{row["run_id"]}.npz', images=images, labels=labels)
    feats, logits = extractor(images)
    acc, per_class = metrics.sample_accuracy(logits, labels)
    scored.append(dict(run_id=row['run_id'], params=float(row['params']), flops=float(row['flops']),
                       loss=float(row['loss']), fd=metrics.frechet_distance(real_feats, feats),
                       sample_accuracy=acc, per_class_accuracy=dict(zip(class_names, per_class.tolist()))))
    print(f'{row["run_id"]}: FD {scored[-1]["fd"]:.4f}, sample accuracy {acc:.4f}', flush=True)
    if row is rows[-1]:  # the largest model: the grid and the .npz any classifier can check
      np.savez(samples_dir / 'samples.npz', images=images, labels=labels, class_names=np.asarray(class_names))
      import PIL.Image  # pylint: disable=g-import-not-at-top
      grid = sample.image_grid(images, rows=num_classes)
      PIL.Image.fromarray(grid).save(samples_dir / 'samples.png')

  summary = dict(runs=scored, class_names=class_names, samples_per_class=f.samples_per_class,
                 num_reference=len(real_eval), fd_real_floor=floor, largest=rows[-1]['run_id'], **knobs)
  tmp = samples_dir / 'quality.json.tmp'
  tmp.write_text(json.dumps(summary, indent=1))
  os.replace(tmp, samples_dir / 'quality.json')


def run():
  flags.DEFINE_string('out', 'demo_out', 'The demo folder (sweep/, classifier/, tokenizer/).')
  flags.DEFINE_integer('samples_per_class', 32, 'Samples per class and size.')
  sampling_flags.define_knobs(top_k=0, top_p=0.0, seed_help='Sampling seed (the same for every size).')
  flags.DEFINE_integer('batch_size', 64, 'Images per compiled sampling batch.')
  cli.run(main, prog=PROG)


if __name__ == '__main__':
  run()
