"""Decoding of bad or unusual image files, and VAR's resize / crop / scale rules."""
import io

import numpy as np
import PIL.Image
import pytest

from var_jax.data import preprocess


def _encode(img: PIL.Image.Image, fmt: str) -> bytes:
  buf = io.BytesIO()
  img.save(buf, format=fmt)
  return buf.getvalue()


def _rgb(h=20, w=30):
  return np.random.default_rng(0).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_clean_png_decodes_exactly():
  arr = _rgb()
  out, problem = preprocess.decode_image(_encode(PIL.Image.fromarray(arr), 'PNG'))
  assert problem is None
  np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize('data, problem', [
    (b'', 'zero_byte'),
    (b'this is not an image at all', 'corrupt'),
    (b'\xff\xd8\xff\xe0' + b'\x00' * 20, 'corrupt'),
])
def test_unreadable_bytes_are_skipped_not_raised(data, problem):
  assert preprocess.decode_image(data) == (None, problem)


def test_truncated_jpeg_is_skipped():
  data = _encode(PIL.Image.fromarray(_rgb(64, 64)), 'JPEG')
  out, problem = preprocess.decode_image(data[:len(data) // 2])
  assert out is None and problem == 'truncated'


def test_tiny_image_is_skipped():
  data = _encode(PIL.Image.fromarray(_rgb(4, 40)), 'PNG')
  assert preprocess.decode_image(data) == (None, 'tiny')
  assert preprocess.decode_image(data, min_side=4)[1] is None


def test_grayscale_becomes_three_equal_channels():
  gray = np.arange(20 * 30, dtype=np.uint8).reshape(20, 30)
  out, problem = preprocess.decode_image(_encode(PIL.Image.fromarray(gray, 'L'), 'PNG'))
  assert problem == 'grayscale' and out.shape == (20, 30, 3)
  for c in range(3):
    np.testing.assert_array_equal(out[..., c], gray)


def test_rgba_transparent_pixels_become_white():
  rgba = np.zeros((10, 10, 4), np.uint8)
  rgba[..., 0] = 200
  rgba[:5, :, 3] = 255  # Top half opaque red-ish, bottom half fully transparent.
  out, problem = preprocess.decode_image(_encode(PIL.Image.fromarray(rgba, 'RGBA'), 'PNG'))
  assert problem == 'rgba'
  np.testing.assert_array_equal(out[0, 0], [200, 0, 0])
  np.testing.assert_array_equal(out[9, 9], [255, 255, 255])


def test_cmyk_jpeg_is_converted_to_rgb():
  cmyk = PIL.Image.new('CMYK', (16, 16), (0, 255, 255, 0))  # Pure red in CMYK.
  out, problem = preprocess.decode_image(_encode(cmyk, 'JPEG'))
  assert problem == 'cmyk' and out.shape == (16, 16, 3)
  assert out[8, 8, 0] > 200 and out[8, 8, 1] < 60 and out[8, 8, 2] < 60


def test_16bit_png_keeps_the_top_of_its_range():
  arr16 = np.full((10, 12), 65535, np.uint16)
  arr16[5:] = 32896  # 128 * 257
  out, problem = preprocess.decode_image(_encode(PIL.Image.fromarray(arr16), 'PNG'))
  assert problem == '16bit' and out.shape == (10, 12, 3)
  assert out[0, 0].tolist() == [255, 255, 255] and out[9, 0].tolist() == [128, 128, 128]


def test_as_rgb_handles_arrays_of_any_channels():
  assert preprocess.as_rgb(np.zeros((9, 9, 3), np.uint8))[1] is None
  gray, problem = preprocess.as_rgb(np.full((9, 9, 1), 7, np.uint8))
  assert problem == 'grayscale' and gray.shape == (9, 9, 3) and gray.max() == 7
  la = np.zeros((9, 9, 2), np.uint8)  # Black, fully transparent -> white.
  assert preprocess.as_rgb(la)[0].min() == 255


@pytest.mark.parametrize('h, w, size, expected', [(37, 50, 72, (72, 97)), (50, 37, 72, (97, 72)),
                                                  (40, 40, 18, (18, 18))])
def test_resize_shorter_side_truncates_the_long_side_as_torchvision(h, w, size, expected):
  assert preprocess.resize_shorter(_rgb(h, w), size).shape[:2] == expected


def test_center_crop_uses_python_rounding():
  img = np.arange(73 * 70).reshape(73, 70, 1)
  out = preprocess.center_crop(img, 64)
  # top = round(9 / 2) = 4 (banker's rounding), left = round(6 / 2) = 3.
  assert out.shape == (64, 64, 1) and out[0, 0, 0] == 4 * 70 + 3


def test_eval_image_of_a_flat_colour_is_that_colour_in_signed_unit_range():
  img = np.zeros((40, 60, 3), np.uint8)
  img[..., 0], img[..., 1], img[..., 2] = 0, 255, 51
  out = preprocess.eval_image(img, 16)
  assert out.shape == (16, 16, 3) and out.dtype == np.float32
  np.testing.assert_allclose(out[8, 8], [-1.0, 1.0, -0.6], atol=1e-5)


def test_train_image_is_deterministic_in_its_rng_and_flips():
  img = _rgb(30, 30)
  a = preprocess.train_image(img, 16, np.random.default_rng(1), hflip=False)
  b = preprocess.train_image(img, 16, np.random.default_rng(1), hflip=False)
  np.testing.assert_array_equal(a, b)
  assert a.shape == (16, 16, 3) and -1 <= a.min() and a.max() <= 1
  # With mid_ratio 1 the crop is the whole image: the flip is visible exactly.
  flips = [preprocess.train_image(img[:16, :16], 16, np.random.default_rng(s), hflip=True, mid_ratio=1.0)
           for s in range(8)]
  plain = preprocess.to_signed_unit(img[:16, :16])
  mirrored = plain[:, ::-1]
  assert all(np.array_equal(f, plain) or np.array_equal(f, mirrored) for f in flips)
  assert any(np.array_equal(f, mirrored) for f in flips) and any(np.array_equal(f, plain) for f in flips)


def test_palette_with_transparency_is_composited_over_white():
  pal = PIL.Image.new('P', (10, 10), 0)
  pal.putpalette([0, 0, 0, 250, 10, 10] + [0] * 762)
  pal.paste(1, (0, 0, 10, 5))
  pal.info['transparency'] = 0
  out, problem = preprocess.decode_image(_encode(pal, 'PNG'))
  assert problem == 'palette'
  assert out[0, 0].tolist() == [250, 10, 10] and out[9, 9].tolist() == [255, 255, 255]
