"""`make demo` end to end at a reduced size: every stage runs, the report holds numbers, reruns reuse."""
import json
import math
import re
import subprocess
import sys

import pytest

import numpy as np

from var_jax.demo import stages as demo

pytestmark = pytest.mark.slow


def _demo(out, *flags):
  return subprocess.run([sys.executable, '-m', 'var_jax.demo', f'--out={out}', '--size=tiny', *flags],
                        capture_output=True, text=True, timeout=1200, cwd=demo.REPO)


@pytest.fixture(scope='module')
def tiny_demo(tmp_path_factory):
  out = tmp_path_factory.mktemp('demo')
  res = _demo(out)
  assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
  return out, res


def test_report_has_every_stage_runs_fits_plots_and_samples(tiny_demo):
  out, res = tiny_demo
  report = (out / 'report.md').read_text()
  timings = json.loads((out / 'timings.json').read_text())
  assert list(timings) == [s.name for s in demo.make_stages(out, 'tiny')]
  assert all(t['seconds'] > 0 for t in timings.values())
  for stage in timings:
    assert re.search(rf'^\| {stage} \| .* \| \d+\.\d \|$', report, re.M), stage
  flops = sum(float(r['flops']) for r in demo.results(out / 'sweep'))
  gflops = re.search(r'Sweep throughput .*: \*\*(\S+) GFLOP/s\*\*', report, re.M).group(1)
  assert float(gflops) == pytest.approx(flops / timings['sweep']['seconds'] / 1e9, rel=5e-3)
  fit_rows = re.findall(r'^\| (params|flops) \| (loss|loss_last_scale) \| (\S+) \| \[(\S+), (\S+)\] \| (\S+) \|'
                        r' .* \| (\S+) \|$', report, re.M)
  assert {(x, y) for x, y, *_ in fit_rows} >= {('params', 'loss'), ('flops', 'loss')}
  for _, _, alpha, lo, hi, beta, r in fit_rows:
    assert all(math.isfinite(float(v)) for v in (alpha, lo, hi, beta))
    assert r == 'nan' or -1 <= float(r) <= 1  # r is undefined for the tiny sweep's two points
  images = re.findall(r'!\[[^\]]*\]\(([^)]+)\)', report)
  assert 'samples/samples_labelled.png' in images and 'tokenizer/recon_grid_zoom.png' in images and len(images) >= 4
  for rel in images:
    assert (out / rel).stat().st_size > 0, rel
  assert '[demo] done' in res.stdout
  report_json = json.loads((out / 'report.json').read_text())
  assert {'psnr', 'ssim'} <= set(report_json['tokenizer'])


def test_samples_npz_holds_the_grid_images_and_every_size_is_scored(tiny_demo):
  out, _ = tiny_demo
  quality = json.loads((out / 'samples' / 'quality.json').read_text())
  rows = demo.results(out / 'sweep')
  assert [q['run_id'] for q in quality['runs']] == [r['run_id'] for r in rows]
  for q in quality['runs']:
    assert math.isfinite(q['fd']) and q['fd'] >= 0 and 0 <= q['sample_accuracy'] <= 1
  data = np.load(out / 'samples' / 'samples.npz')
  images, labels = data['images'], data['labels']
  k = len(quality['class_names'])
  n = k * quality['samples_per_class']
  assert images.shape == (n, 16, 16, 3) and images.dtype == np.uint8 and labels.shape == (n,)
  assert np.array_equal(labels, np.repeat(np.arange(k), quality['samples_per_class']))
  import PIL.Image  # pylint: disable=g-import-not-at-top
  grid = np.asarray(PIL.Image.open(out / 'samples' / 'samples.png'))
  assert grid.shape == (k * 16, quality['samples_per_class'] * 16, 3)
  assert np.array_equal(grid[:16, :16], images[0]) and np.array_equal(grid[-16:, -16:], images[-1])


def test_console_shows_stage_lines_not_the_subprocesses_logs(tiny_demo):
  out, res = tiny_demo
  for noise in ('libtpu', 'Shuffling', 'INFO', 'Traceback'):
    assert noise not in res.stdout + res.stderr, noise
  assert not re.search(r'^[IWEF]\d{4} ', res.stdout + res.stderr, re.M)  # absl's log lines
  starts = re.findall(r'^\[demo\] (\w+): (?!done in)', res.stdout, re.M)
  assert starts == [s.name for s in demo.make_stages(out, 'tiny')]
  assert re.search(r'^\[demo\] tokenizer: done in \d+ s; eval PSNR [\d.]+ dB, SSIM', res.stdout, re.M)
  assert re.search(r'^\[demo\] fit: done in \d+ s; L ~ X\^alpha against params: alpha', res.stdout, re.M)
  assert (out / 'logs' / 'tokenizer.log').read_text().count('step ') > 0


def test_rerun_reuses_every_stage(tiny_demo):
  out, _ = tiny_demo
  res = _demo(out)
  assert res.returncode == 0, res.stderr[-2000:]
  assert res.stdout.count('reusing earlier output') == len(demo.make_stages(out, 'tiny'))


def test_failed_stage_names_itself_and_its_log(tmp_path):
  bad = demo.Stage('broken', 'a stage that fails', lambda: False, lambda: [sys.executable, '-c', 'raise SystemExit(3)'])
  with pytest.raises(demo.StageError, match=r"demo stage 'broken' exited with 3; see .*broken\.log"):
    demo.run_stages([bad], tmp_path)
  assert (tmp_path / 'logs' / 'broken.log').exists()
