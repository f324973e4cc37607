"""OUT/report.md: the stages and their times, the tokenizer's reconstructions, the runs with their loss, FD and
sample accuracy, the fitted laws for loss and FD against parameters and compute, and the largest model's samples."""
import json
import pathlib

import numpy as np

from var_jax.demo import stages
from var_jax.scaling import fit as fit_lib
from var_jax.scaling import plots
from var_jax.train.rundir import RunDir

ZOOM = 4  # the 16px pictures are drawn this many times larger


def _fmt(v, digits=4) -> str:
  return 'n/a' if v is None or v == '' else f'{float(v):.{digits}g}'


def _ci(fit: dict, key: str) -> str:
  lo_hi = fit.get(f'{key}_ci')
  return f'[{_fmt(lo_hi[0])}, {_fmt(lo_hi[1])}]' if lo_hi else 'n/a'


def _yes(ok: bool) -> str:
  return 'yes' if ok else 'no'


def _zoomed(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
  import PIL.Image  # pylint: disable=g-import-not-at-top
  img = PIL.Image.open(src)
  img.resize((img.width * ZOOM, img.height * ZOOM), PIL.Image.NEAREST).save(dst)
  return dst


def labelled_grid(npz: pathlib.Path, path: pathlib.Path) -> pathlib.Path:
  """The samples of samples.npz, one row per class with its name on the left."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from var_jax.cli import sample  # pylint: disable=g-import-not-at-top
  data = np.load(npz)
  names = [str(n) for n in data['class_names']]
  images = data['images']
  grid = sample.image_grid(images, rows=len(names))
  h = images.shape[1]
  fig, ax = plt.subplots(figsize=(grid.shape[1] / 40 + 1.2, grid.shape[0] / 40 + 0.3))
  ax.imshow(grid, interpolation='nearest')
  ax.set_yticks(h * np.arange(len(names)) + h / 2, names, fontsize=8)
  ax.set_xticks([])
  for side in ax.spines.values():
    side.set_visible(False)
  fig.savefig(path, dpi=120, bbox_inches='tight')
  plt.close(fig)
  return path


def _fits_rows(fits: dict) -> list[str]:
  rows = []
  for y in ('loss', 'fd'):
    for x in ('params', 'flops'):
      fit = fits.get(f'power_{x}_{y}')
      if fit:
        rows.append(f'| {x} | {y} | {_fmt(fit["alpha"])} | {_ci(fit, "alpha")} | {_fmt(fit["beta"])} | '
                    f'{_ci(fit, "beta")} | {_fmt(fit["r"])} |')
  return rows


def _fd_fits(quality: dict, rows: list[dict], report_dir: pathlib.Path) -> tuple[dict, list[pathlib.Path]]:
  """Power laws of FD against parameters and compute, and their plots."""
  runs = quality['runs']
  size = {r['run_id']: f'd{r["depth"]} w{r["width"]}' for r in rows}
  fd = np.asarray([q['fd'] for q in runs])
  fits, pngs = {}, []
  if len(runs) < 2 or not np.all(fd > 0):
    return fits, pngs
  labels = [size.get(q['run_id'], q['run_id']) for q in runs]
  for x in ('params', 'flops'):
    xs = np.asarray([q[x] for q in runs])
    fits[f'power_{x}_fd'] = fit_lib.fit_power(xs, fd, n_bootstrap=200)
    png = report_dir / f'fd_vs_{x}.png'
    plots.loss_vs_x(xs, fd, fits[f'power_{x}_fd'], str(png), x, 'FD', labels=labels)
    pngs.append(png)
  return fits, pngs


def sweep_gflops(rows: list[dict], timings: dict[str, dict]) -> float | None:
  """The sweep stage's throughput: its runs' training FLOPs over its wall time, in GFLOP/s."""
  seconds = timings.get('sweep', {}).get('seconds')
  return sum(float(r['flops']) for r in rows) / seconds / 1e9 if seconds else None


def write_report(out: pathlib.Path, timings: dict[str, dict], size: str) -> pathlib.Path:
  sweep, samples = out / 'sweep', out / 'samples'
  report_dir = sweep / 'report'
  rows = [r for r in stages.results(sweep) if r['status'] == 'done']
  fits = json.loads((report_dir / 'fits.json').read_text())
  quality = json.loads((samples / 'quality.json').read_text())
  by_run = {q['run_id']: q for q in quality['runs']}
  fd_fits, fd_pngs = _fd_fits(quality, rows, report_dir)
  fits.update(fd_fits)
  tok, data = RunDir(out / 'tokenizer').done()['eval'], RunDir(out / 'tokenizer').config_json()['data']
  losses = [float(r['loss']) for r in rows]
  fds = [by_run[r['run_id']]['fd'] for r in rows if r['run_id'] in by_run]
  largest = by_run.get(quality['largest'], {})
  total = sum(t['seconds'] for t in timings.values())
  gflops = sweep_gflops(rows, timings)
  classes = quality['class_names']
  shapes = 'one shape' if data['max_shapes'] == 1 else f'1 to {data["max_shapes"]} shapes'
  recon = _zoomed(out / 'tokenizer' / 'recon_grid.png', out / 'tokenizer' / 'recon_grid_zoom.png')
  grid = labelled_grid(samples / 'samples.npz', samples / 'samples_labelled.png')

  lines = [
      '# var_jax demo', '',
      f'The whole VAR loop on {size!r} settings: a synthetic dataset drawn locally, a multi-scale VQVAE tokenizer '
      'trained on it, the dataset pre-tokenized, a sweep of VAR sizes trained on the tokens, scaling laws fitted '
      'to the final eval losses, a shapes classifier, and class-conditional samples of every size scored by it. '
      "Every stage is one of var_jax's own commands; each one's exact command line heads its log in `logs/`.", '',
      f'Data: `synthetic_shapes`, style {data["synthetic_style"]!r}, {data["image_size"]} px, '
      f'{data["num_train"]} training and {data["num_eval"]} held-out images, {shapes} an image of radius '
      f'{data["synthetic_radius"][0]}-{data["synthetic_radius"][1]} of the side; '
      f'{len(classes)} classes: {", ".join(classes)}.', '',
      '## Stages', '', '| stage | what | wall time (s) |', '| --- | --- | --- |',
      *[f'| {name} | {t["what"]} | {t["seconds"]:.1f} |' for name, t in timings.items()],
      f'| total | | {total:.1f} |', '',
      f'Sweep throughput (its runs\' training FLOPs / its wall time): **{_fmt(gflops, 3)} GFLOP/s**.', '',
      '## Tokenizer', '',
      f'Held-out reconstruction from all scales: PSNR **{tok["psnr"]:.2f} dB**, SSIM **{tok["ssim"]:.3f}**. '
      'Top row: inputs; then the reconstructions from the first 1, 2, ... scales.', '',
      f'![reconstructions]({recon.relative_to(out)})', '',
      '## Runs (final eval, and samples scored by the shapes classifier)', '',
      '| run | depth | width | params | training FLOPs | eval loss | last-scale loss | FD | sample accuracy |',
      '| --- | --- | --- | --- | --- | --- | --- | --- | --- |',
      *[f'| {r["run_id"]} | {r["depth"]} | {r["width"]} | {_fmt(r["params"])} | {_fmt(r["flops"])} | '
        f'{_fmt(r["loss"])} | {_fmt(r["loss_last_scale"])} | {_fmt(by_run.get(r["run_id"], {}).get("fd"))} | '
        f'{_fmt(by_run.get(r["run_id"], {}).get("sample_accuracy"), 3)} |' for r in rows], '',
      f'Each larger model reaches a lower eval loss: **{_yes(all(a > b for a, b in zip(losses, losses[1:])))}**. '
      f'FD falls from the smallest model to the largest: **{_yes(len(fds) > 1 and fds[-1] < fds[0])}**. '
      f'FD of {quality["samples_per_class"] * len(classes)} real training images (the floor at this sample count): '
      f'{_fmt(quality["fd_real_floor"])}; FD and sample accuracy from {quality["samples_per_class"]} samples per '
      f'class, against {quality["num_reference"]} held-out images.', '',
      '## Fitted laws, Y = (beta X)^alpha (95% bootstrap intervals)', '',
      '| X | Y | alpha | alpha 95% | beta | beta 95% | r |', '| --- | --- | --- | --- | --- | --- | --- |',
      *_fits_rows(fits), '',
      '## Plots', '',
  ]
  for png in [report_dir / 'loss_vs_compute.png', report_dir / 'loss_vs_params.png', *fd_pngs]:
    if png.exists():
      lines += [f'![{png.stem}]({png.relative_to(out)})', '']
  acc = largest.get('sample_accuracy')
  lines += [
      f'## Samples from the largest model ({quality["largest"]})', '',
      f'One row per class, classifier-free guidance {quality["cfg"]}, sampled from the full distribution '
      f'(top-k {quality["top_k"] or "off"}, top-p {quality["top_p"] or "off"}). The classifier labels '
      f'{_fmt(acc, 3) if acc is not None else "n/a"} of them as their class. The same images, with their labels: '
      '`samples/samples.npz` (`images`, `labels`, `class_names`).', '',
      f'![samples]({grid.relative_to(out)})', '',
      f'The sweep\'s own report, with every fit it makes: `{(report_dir / "report.md").relative_to(out)}`.']
  path = out / 'report.md'
  path.write_text('\n'.join(lines) + '\n')
  (out / 'report.json').write_text(json.dumps(dict(
      timings=timings, sweep_gflops=gflops, tokenizer=dict(psnr=tok['psnr'], ssim=tok['ssim']), quality=quality,
      fits={k: {m: v[m] for m in ('alpha', 'beta', 'r')} for k, v in fits.items() if k.startswith('power_')},
      runs=[dict(run_id=r['run_id'], params=float(r['params']), flops=float(r['flops']), loss=float(r['loss']))
            for r in rows]), indent=1))
  return path
