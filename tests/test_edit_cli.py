"""`python -m var_jax.edit` on a tiny random model: a folder and a resized image edited, one-line errors."""
import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import PIL.Image
import pytest

from var_jax.cli import edit
from var_jax import errors
from var_jax.models import tokenizer
from var_jax.models import var as var_lib
from var_jax.weights import var as var_weights
from var_jax.weights import vqvae

PATCH_NUMS = (1, 3, 4)  # 8x8 images
VAE_KW = dict(vocab_size=32, z_channels=8, ch=16, ch_mult=(1, 2), num_res_blocks=1, norm_groups=8,
              share_quant_resi=2, patch_nums=PATCH_NUMS)
VAR_KW = dict(vocab_size=32, cvae=8, patch_nums=PATCH_NUMS, num_classes=5, depth=1, embed_dim=32,
              num_heads=2, cond_drop_rate=0.0)


def _random(shapes, seed):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (0.3 * rng.normal(size=s.shape)).astype(np.float32), nn.unbox(shapes))


def _png(path, size, seed):
  rgb = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
  PIL.Image.fromarray(rgb).save(path)
  return str(path)


@pytest.fixture(scope='module')
def models(tmp_path_factory):
  """(--var .npz, --tokenizer folder) of a tiny random VAR and VQVAE."""
  root = tmp_path_factory.mktemp('models')
  var, vae = var_lib.VAR(**VAR_KW), tokenizer.VQVAE(**VAE_KW)
  var_path = str(root / 'var.npz')
  from var_jax.weights import state_dict as sd
  sd.write_state_dict(var_path, var_weights.to_state_dict(_random(var_weights.param_shapes(var), 0), var))
  vqvae.save(str(root / 'tokenizer'), vae, _random(vqvae.param_shapes(vae), 1))
  return var_path, str(root / 'tokenizer')


def _cli(models, *argv):
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=1')
  return subprocess.run([sys.executable, '-m', 'var_jax.edit', f'--var={models[0]}', f'--tokenizer={models[1]}',
                         '--top_k=0', '--top_p=0', *argv], capture_output=True, text=True, env=env, check=False)


def test_edits_a_folder_and_a_resized_image(models, tmp_path):
  folder = tmp_path / 'in'
  folder.mkdir()
  _png(folder / 'a.png', (8, 8), 0)
  _png(folder / 'b.png', (8, 8), 1)
  big = _png(tmp_path / 'big.png', (12, 10), 2)
  out = tmp_path / 'out'
  proc = _cli(models, f'--image={folder},{big}', '--box=0.25,0.25,0.75,1.0', '--mode=inpaint', '--class=3',
              '--resize', f'--out_dir={out}', '--batch_size=2')
  assert proc.returncode == 0, proc.stderr[-3000:]
  for stem in ('a', 'b', 'big'):
    edited = np.asarray(PIL.Image.open(out / f'{stem}_inpaint.png'))
    panel = np.asarray(PIL.Image.open(out / f'{stem}_inpaint_panel.png'))
    assert edited.shape == (8, 8, 3) and panel.shape == (8, 16, 3)
    # The region (rows 2..5, columns 2..7 in pixels) is outlined on both halves, nothing outside it.
    red = np.all(panel == edit.OUTLINE_RGB, axis=-1)
    assert red[2, 2] and red[5, 7] and red[2, 10] and not red[:2].any() and not red[6:].any()
    assert not red[3:5, 3:7].any()
    np.testing.assert_array_equal(panel[:, 8:][~red[:, 8:]], edited[~red[:, 8:]])


def test_wrong_image_size_is_one_line(models, tmp_path):
  big = _png(tmp_path / 'big.png', (12, 10), 2)
  proc = _cli(models, f'--image={big}', '--box=0.25,0.25,0.75,1.0')
  assert proc.returncode == errors.ConfigError.exit_code
  assert proc.stderr.count('\n') == 1 and 'var-edit: error:' in proc.stderr
  assert 'big.png is 12x10' in proc.stderr and '8x8' in proc.stderr and '--resize' in proc.stderr


def test_bad_regions_and_classes(tmp_path):
  with pytest.raises(errors.ConfigError, match='--box.*fractions in'):
    edit.region_mask(['0.2', '0.2', '1.5', '0.8'], None, 4)
  with pytest.raises(errors.ConfigError, match='--box.*covers no token'):
    edit.region_mask(['0.5', '0.2', '0.5', '0.8'], None, 4)
  with pytest.raises(errors.ConfigError, match='exactly one of --box or --mask'):
    edit.region_mask(None, None, 4)
  black = tmp_path / 'black.png'
  PIL.Image.fromarray(np.zeros((16, 16), np.uint8)).save(black)
  with pytest.raises(errors.ConfigError, match='black.png marks no token'):
    edit.region_mask(None, str(black), 4)
  painted = np.zeros((16, 16), np.uint8)
  painted[4:12, 8:16] = 255
  PIL.Image.fromarray(painted).save(tmp_path / 'half.png')
  region = edit.region_mask(None, str(tmp_path / 'half.png'), 4)
  np.testing.assert_array_equal(region, np.pad(np.ones((2, 2), bool), ((1, 1), (2, 0))))
  assert edit.edit_label(None, 5) == 5 and edit.edit_label(4, 5) == 4
  for bad in (-1, 6):
    with pytest.raises(errors.ConfigError, match=f'--class={bad} is outside'):
      edit.edit_label(bad, 5)
  with pytest.raises(errors.ConfigError, match='no such file'):
    edit.image_files([str(tmp_path / 'absent.png')])
