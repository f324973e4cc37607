"""var_jax.tokenize with a real (tiny, random-weight) VQVAE: stored tokens equal encoding on the fly."""
import functools
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from var_jax import data
from var_jax.cli import pretokenize as tokenize
from var_jax.data import preprocess
from var_jax.data import sources
from var_jax.models import tokenizer as tokenizer_lib
from var_jax.weights import state_dict as sd
from var_jax.weights import vqvae

VQVAE_KW = dict(vocab_size=64, z_channels=8, ch=16, ch_mult=(1, 2), num_res_blocks=1, norm_groups=8,
                share_quant_resi=2, patch_nums=(1, 2, 4))
R = 8  # patch_nums[-1] * 2 ** (len(ch_mult) - 1)
L = 1 + 4 + 16


@pytest.fixture(scope='module')
def tokenizer_dir(tmp_path_factory):
  """A saved tokenizer with random weights (drawn in numpy: compiling a random init is slow on CPU)."""
  vae = tokenizer_lib.VQVAE(**VQVAE_KW)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(s.dtype), vqvae.param_shapes(vae))
  path = str(tmp_path_factory.mktemp('tokenizer') / 'tiny')
  vqvae.save(path, vae, params)
  return path


def _config(data_dir, tokenizer_path):
  c = ml_collections.ConfigDict()
  c.data = data.default_config()
  c.data.update(dict(data_dir=str(data_dir), image_size=R, num_train=24, num_eval=4))
  c.tokenizer = ml_collections.ConfigDict(dict(VQVAE_KW, path=tokenizer_path, seed=0))
  return c


@pytest.fixture(scope='module')
def config(tmp_path_factory, tokenizer_dir):
  return _config(tmp_path_factory.mktemp('tfds'), tokenizer_dir)


@pytest.fixture(scope='module')
def tokenizer(tokenizer_dir):
  return vqvae.load(tokenizer_dir)


@pytest.fixture(scope='module')
def out(config, tmp_path_factory):
  out = str(tmp_path_factory.mktemp('tok') / 'shapes_tokens')
  counts = tokenize.tokenize(config, out, flip=True, batch_size=8, chunk_size=16, progress=False,
                             process_index=0, process_count=1)
  assert counts['images'] == 24 and counts['records'] == 48
  return out


def test_stored_tokens_equal_encoding_on_the_fly(config, tokenizer, out):
  module, params = tokenizer
  src = sources.open_source(config.data, 'train')
  imgs = np.stack([preprocess.eval_image(src.records[i]['image'], R) for i in range(24)])
  img_to_idx = jax.jit(functools.partial(module.apply, method=module.img_to_idx))
  idx_list = img_to_idx({'params': params}, jnp.asarray(np.concatenate([imgs, imgs[:, :, ::-1]])))
  assert [i.shape for i in idx_list] == [(48, 1), (48, 4), (48, 16)]
  both = np.concatenate([np.asarray(i) for i in idx_list], axis=1)
  expected, flipped = both[:24], both[24:]
  assert len(np.unique(expected)) > 8  # Random weights still give varied tokens: the comparison means something.
  stored = tfds.builder_from_directory(out).as_data_source('train')
  assert len(stored) == 48
  seen = set()
  for r in (stored[i] for i in range(48)):
    i, aug = int(r['index']), int(r['aug'])
    np.testing.assert_array_equal(r['tokens'], (flipped if aug == 1 else expected)[i])
    assert r['tokens'].dtype == np.uint16 and int(r['label']) == int(src.records[i]['label'])
    seen.add((i, aug))
  assert seen == {(i, a) for i in range(24) for a in (0, 1)}


def test_token_dataset_carries_the_tokenizer_identity(tokenizer, out):
  info = data.tokens.read_info(out)
  assert info['fingerprint'] == sd.fingerprint(tokenizer[1])
  assert list(info['patch_nums']) == [1, 2, 4] and info['vocab_size'] == 64


def test_training_reads_it_and_another_tokenizer_is_refused(tokenizer, out):
  cfg = data.default_config()
  cfg.name, cfg.path = 'tokens', out
  kw = dict(split='train', global_batch_size=6, seed=0, train=True, process_index=0, process_count=1)
  batch = next(data.make_loader(cfg, tokenizer_fingerprint=sd.fingerprint(tokenizer[1]), **kw))
  assert batch['tokens'].shape == (6, L) and batch['tokens'].dtype == np.int32
  other = sd.fingerprint(jax.tree.map(lambda x: x + 1, tokenizer[1]))
  with pytest.raises(ValueError, match=f"but this run's tokenizer is {other}"):
    data.make_loader(cfg, tokenizer_fingerprint=other, **kw)


def test_cli_resumes_a_finished_split_without_work(config, out, tmp_path):
  cfg_file = tmp_path / 'cfg.py'
  cfg_file.write_text(textwrap.dedent(f'''
      import ml_collections
      def get_config():
        return ml_collections.ConfigDict({{'data': {config.data.to_dict()!r},
                                           'tokenizer': {config.tokenizer.to_dict()!r}}})
  '''))
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-m', 'var_jax.tokenize', f'--config={cfg_file}', f'--out={out}',
                         '--flip', '--batch_size=8', '--chunk_size=16'],
                        capture_output=True, text=True, env=env, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "'skipped_chunks': 2" in proc.stdout and "'records'" not in proc.stdout

