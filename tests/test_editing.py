"""Zero-shot editing: kept tokens, seeds, out-/in-paint duality, classes, compiles, masks, errors."""
import logging
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from var_jax.models import editing
from var_jax.models import sampling
from var_jax.models import tokenizer
from var_jax.models import var as var_lib
from var_jax.weights import vqvae

PATCH_NUMS = (1, 3, 4)  # only the 1-token scale is always kept; 4 -> 3 resizes unevenly
VAE_KW = dict(vocab_size=32, z_channels=8, ch=16, ch_mult=(1, 2), num_res_blocks=1, norm_groups=8,
              share_quant_resi=2, patch_nums=PATCH_NUMS)
VAR_KW = dict(vocab_size=32, cvae=8, patch_nums=PATCH_NUMS, num_classes=5, depth=2, embed_dim=32,
              num_heads=2, cond_drop_rate=0.0)
BOX = (0.25, 0.25, 0.75, 1.0)  # rows 1..2, columns 1..3 of the 4 x 4 last scale
KNOBS = dict(cfg=2.0, top_k=0, top_p=0.0)


def _random(shapes, seed, scale):
  """Random weights of the given shapes (drawn in numpy: a compiled random init is slow on CPU)."""
  rng = np.random.default_rng(seed)
  draw = lambda s: (scale * rng.normal(size=s.shape)).astype(np.float32)
  return jax.tree.map(draw, nn.unbox(shapes))


@pytest.fixture(scope='module')
def tiny():
  """(sampler, var params, vae params, images (2, 8, 8, 3), their tokens per scale), built once."""
  vae, var = tokenizer.VQVAE(**VAE_KW), var_lib.VAR(**VAR_KW)
  L = var.seq_len - var.first_l
  var_shapes = jax.eval_shape(var.init, jax.random.key(0), jnp.zeros((1,), jnp.int32),
                              jnp.zeros((1, L, var.cvae)))['params']
  var_params = _random(var_shapes, 0, 0.3)
  vae_params = _random(vqvae.param_shapes(vae), 1, 0.3)
  img = np.random.default_rng(2).uniform(-1, 1, (2, vae.image_size, vae.image_size, 3))
  img = jnp.asarray(img, jnp.float32)
  idx = jax.jit(lambda p, x: vae.apply({'params': p}, x, method='img_to_idx'))(vae_params, img)
  return sampling.make_sampler(var, vae), var_params, vae_params, img, [np.asarray(i) for i in idx]


def _naive_bilinear(mask_KK, pn):
  """torch bilinear (align_corners=False) by its definition, one output pixel at a time, float64."""
  K = mask_KK.shape[0]
  out = np.zeros((pn, pn))
  taps = []
  for i in range(pn):
    src = max((i + 0.5) * K / pn - 0.5, 0.0)
    lo = min(math.floor(src), K - 1)
    taps.append((lo, min(lo + 1, K - 1), src - lo))
  for i, (y0, y1, ly) in enumerate(taps):
    for j, (x0, x1, lx) in enumerate(taps):
      out[i, j] = ((1 - ly) * ((1 - lx) * mask_KK[y0, x0] + lx * mask_KK[y0, x1])
                   + ly * ((1 - lx) * mask_KK[y1, x0] + lx * mask_KK[y1, x1]))
  return out


def _expected_keeps(mask_KK):
  """Per scale (pn²,) bool: the resized mask > 0.5, every token of the scales with <= 3."""
  keeps = []
  for pn in PATCH_NUMS:
    m = _naive_bilinear(mask_KK, pn)
    assert np.abs(m - 0.5).min() > 1e-6  # no tie: the float32 code must agree
    keeps.append(np.ones(pn * pn, bool) if pn * pn <= 3 else (m > 0.5).reshape(-1))
  return keeps


def _edit(tiny, keep_mask, label=5, seed=0, **kw):
  sampler, var_params, vae_params, img, _ = tiny
  idx, out = editing.edit(sampler, var_params, vae_params, label, jax.random.key(seed), img,
                          keep_mask, **{**KNOBS, **kw})
  return [np.asarray(i) for i in idx], np.asarray(out)


def test_kept_tokens_are_the_image_and_the_rest_follows_the_seed(tiny):
  image_idx = tiny[-1]
  mask = editing.box_keep_mask(BOX, 4, 'inpaint')
  (a_idx, a_img), (b_idx, _) = _edit(tiny, mask, seed=0), _edit(tiny, mask, seed=1)
  keeps = _expected_keeps(mask)
  assert [k.sum() for k in keeps] == [1, 7, 10]  # 2 of 3 x 3 and 6 of 4 x 4 regenerated
  for k, keep in enumerate(keeps):
    for idx in (a_idx, b_idx):
      np.testing.assert_array_equal(idx[k][:, keep], image_idx[k][:, keep], err_msg=f'scale {k}')
  regenerated = lambda idx: np.concatenate([i[:, ~keep] for i, keep in zip(idx, keeps)], 1)
  assert (regenerated(a_idx) != regenerated(b_idx)).mean() > 0.3
  assert a_img.shape == (2, 8, 8, 3) and 0 <= a_img.min() and a_img.max() <= 1


def test_keeping_nothing_still_keeps_the_coarsest_scales(tiny):
  image_idx = tiny[-1]
  idx, _ = _edit(tiny, np.zeros((4, 4), bool))
  for k in (0, 1):  # 1 and 9 tokens: 9 > 3 is resized, and an all-zero mask keeps nothing there
    assert np.array_equal(idx[k], image_idx[k]) == (PATCH_NUMS[k] ** 2 <= 3)


def test_outpaint_of_a_box_is_inpaint_of_its_complement(tiny):
  out_mask = editing.box_keep_mask(BOX, 4, 'outpaint')
  painted = np.full((40, 40), 255, np.uint8)  # white = regenerate, everywhere outside the box
  painted[10:30, 10:40] = 0
  in_mask = editing.keep_mask_from_image(painted, 4, 'inpaint')
  np.testing.assert_array_equal(in_mask, out_mask)
  (o_idx, o_img), (i_idx, i_img) = _edit(tiny, out_mask, seed=3), _edit(tiny, in_mask, seed=3)
  for k in range(len(PATCH_NUMS)):
    np.testing.assert_array_equal(o_idx[k], i_idx[k])
  np.testing.assert_array_equal(o_img, i_img)
  # The box's tokens are the image's at the last scale, the rest regenerated.
  keep = out_mask.reshape(-1) > 0.5
  np.testing.assert_array_equal(o_idx[-1][:, keep], tiny[-1][-1][:, keep])


def test_class_conditional_editing_follows_the_class(tiny):
  mask = editing.box_keep_mask(BOX, 4, 'inpaint')
  (a_idx, _), (b_idx, _) = _edit(tiny, mask, label=1, seed=4), _edit(tiny, mask, label=3, seed=4)
  keep = mask.reshape(-1) > 0.5
  np.testing.assert_array_equal(a_idx[-1][:, keep], b_idx[-1][:, keep])
  assert (a_idx[-1][:, ~keep] != b_idx[-1][:, ~keep]).any()


def test_no_kept_token_is_plain_sampling_and_nothing_recompiles(tiny, caplog):
  sampler, var_params, vae_params, img, image_idx = tiny
  labels = np.array([2, 5])
  plain_idx, plain_img = sampler(var_params, vae_params, labels, jax.random.key(7), **KNOBS)
  none_kept = [(np.zeros_like(i, bool), i) for i in image_idx]
  forced_idx, forced_img = sampler(var_params, vae_params, labels, jax.random.key(7), **KNOBS,
                                   forced=none_kept)
  for p, f in zip(plain_idx, forced_idx):
    np.testing.assert_array_equal(np.asarray(p), np.asarray(f))
  np.testing.assert_array_equal(np.asarray(plain_img), np.asarray(forced_img))
  _edit(tiny, editing.box_keep_mask(BOX, 4))  # every piece compiled (maybe earlier)
  caplog.set_level(logging.WARNING)
  with jax.log_compiles():
    sampler(var_params, vae_params, labels[::-1].copy(), jax.random.key(8), cfg=1.0, top_k=5,
            top_p=0.5)
    _, edited = _edit(tiny, editing.box_keep_mask((0, 0, 0.5, 0.5), 4, 'outpaint'), label=[0, 4],
                      seed=9, cfg=0.5, top_k=3)
    compiled_again = [r.getMessage() for r in caplog.records if 'Compiling' in r.getMessage()]
    jax.jit(lambda x: x * 3)(jnp.ones(2))  # proves the log is captured
  assert not compiled_again, compiled_again
  assert any('Compiling' in r.getMessage() for r in caplog.records)


def test_token_source_equals_image_source(tiny):
  sampler, var_params, vae_params, img, image_idx = tiny
  mask = editing.box_keep_mask(BOX, 4)
  from_img, _ = _edit(tiny, mask, seed=5)
  from_idx, _ = editing.edit(sampler, var_params, vae_params, 5, jax.random.key(5), image_idx, mask,
                             **KNOBS)
  for a, b in zip(from_img, from_idx):
    np.testing.assert_array_equal(a, np.asarray(b))


@pytest.mark.parametrize('patch_nums', [(1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
                                        (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)])
def test_scale_masks_match_the_official_torch_resize(patch_nums):
  torch = pytest.importorskip('torch', reason='torch is not installed: no torch reference')
  F = torch.nn.functional
  K = patch_nums[-1]
  rng = np.random.default_rng(K)
  binary = rng.random((64, K, K)) < rng.random((64, 1, 1))
  masks = np.concatenate([binary, rng.random((8, K, K))]).astype(np.float32)
  got = editing.scale_keep_masks(jnp.asarray(masks), patch_nums)
  for pn, keep in zip(patch_nums, got):
    # Official `replace_embedding`.
    want = F.interpolate(torch.from_numpy(masks)[:, None], size=(pn, pn), mode='bilinear',
                         align_corners=False).gt(0.5).numpy().reshape(len(masks), -1)
    if pn * pn <= 3:
      want[:] = True
    np.testing.assert_array_equal(np.asarray(keep), want, err_msg=f'pn={pn}')


def test_box_matches_the_official_fixture_mask(fixture_a):
  import json
  edit = json.loads((fixture_a / 'config.json').read_text())['edit']
  want = np.load(fixture_a / 'expected.npz')['edit_keep_mask']  # official get_edit_mask
  got = editing.box_keep_mask(edit['box_yxyx'], want.shape[0], edit['mode'])
  np.testing.assert_array_equal(got, want)


def test_box_rows_round_like_python():
  # round(0.3 * 5) = round(1.5) = 2 and round(0.5 * 5) = round(2.5) = 2 (half to even): empty.
  with pytest.raises(ValueError, match='covers no token'):
    editing.box_keep_mask((0.3, 0.0, 0.5, 1.0), 5)
  inside = editing.box_keep_mask((0.1, 0.0, 0.3, 1.0), 5, 'outpaint')  # round(.5)=0, round(1.5)=2
  np.testing.assert_array_equal(inside[:, 0], [1, 1, 0, 0, 0])


@pytest.mark.parametrize('call, message', [
    (lambda: editing.box_keep_mask((0.2, 0.2, 1.2, 0.8), 5), r'fractions in \[0, 1\]'),
    (lambda: editing.box_keep_mask((0.5, 0.2, 0.5, 0.8), 5), 'covers no token'),
    (lambda: editing.box_keep_mask((0.2, 0.2, 0.8), 5), r'\(y0, x0, y1, x1\)'),
    (lambda: editing.box_keep_mask((0.2, 0.2, 0.8, 0.8), 5, 'paint'), 'edit mode'),
    (lambda: editing.keep_mask_from_image(np.zeros(7), 5), r'\(H, W\)'),
    (lambda: editing.check_keep_mask(np.ones((4, 4)), 5, 2), r'keep mask must be \(5, 5\)'),
    (lambda: editing.check_keep_mask(np.full((5, 5), 2.0), 5, 2), r'in \[0, 1\]'),
    (lambda: editing.check_keep_mask(np.ones((5, 5)), 5, 2), 'nothing to regenerate'),
])
def test_bad_masks(call, message):
  with pytest.raises(ValueError, match=message):
    call()


def test_bad_edit_arguments(tiny):
  sampler, var_params, vae_params, img, image_idx = tiny
  mask = editing.box_keep_mask(BOX, 4)
  run = lambda label=5, source=img, keep=mask: editing.edit(
      sampler, var_params, vae_params, label, jax.random.key(0), source, keep)
  with pytest.raises(ValueError, match=r'labels must be in \[0, 5\]'):
    run(label=6)
  with pytest.raises(ValueError, match=r'labels must be one class or \(2,\)'):
    run(label=[1, 2, 3])
  with pytest.raises(ValueError, match='nothing to regenerate'):
    run(keep=editing.box_keep_mask((0, 0, 1, 1), 4, 'outpaint'))
  with pytest.raises(ValueError, match=r'must be in \[-1, 1\]'):
    run(source=np.asarray(img) * 255)
  with pytest.raises(ValueError, match='image batch must be'):
    run(source=np.zeros((2, 6, 6, 3), np.float32))
  with pytest.raises(ValueError, match='one array per scale'):
    run(source=image_idx[:-1])
  with pytest.raises(ValueError, match=r'scale 1 must be integers of shape \(2, 9\)'):
    run(source=[image_idx[0], image_idx[1][:, :4], image_idx[2]])
  with pytest.raises(ValueError, match=r'must be in \[0, 32\)'):
    run(source=[i + 32 for i in image_idx])
  forced = [(np.ones_like(i, bool), i) for i in image_idx]
  with pytest.raises(ValueError, match='one .keep, idx. pair per scale'):
    sampler(var_params, vae_params, [5, 5], jax.random.key(0), forced=forced[:-1])
  with pytest.raises(ValueError, match=r'forced\[1\] keep must have shape \(2, 9\)'):
    sampler(var_params, vae_params, [5, 5], jax.random.key(0),
            forced=[forced[0], (forced[1][0][:, :3], forced[1][1]), forced[2]])
