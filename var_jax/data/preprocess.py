"""Image decoding that survives bad files, and VAR's train / eval preprocessing.

VAR (official `utils/data.py`) resizes the shorter side to round(1.125 * R) with Lanczos, then random-crops
(train) or centre-crops (eval) to R x R, optionally flips horizontally, and scales to [-1, 1]. The torchvision
rules for the resized long side (truncation) and the centre-crop offset (Python `round`) are kept so that
crops land on the same pixels as the official pipeline.
"""
import io
import warnings

import numpy as np
import PIL.Image

MID_RATIO = 1.125
MIN_SIDE = 8  # Images with a shorter side below this are skipped as 'tiny'.

# Problems `decode_image` reports. Skipped ones yield no image; converted ones yield an RGB image.
SKIPPED = ('zero_byte', 'truncated', 'corrupt', 'tiny')
CONVERTED = ('cmyk', 'grayscale', 'rgba', 'palette', '16bit', 'other_mode')


def _to_rgb(img: PIL.Image.Image) -> tuple[PIL.Image.Image, str | None]:
  """Converts any PIL mode to 8-bit RGB; returns the image and what was converted (None if nothing)."""
  mode = img.mode
  if mode == 'RGB':
    return img, None
  if mode in ('I', 'I;16', 'I;16B', 'I;16L', 'I;16N', 'F'):
    # 16-bit (or 32-bit) grayscale: keep the top 8 bits of a 16-bit range rather than PIL's clipping.
    arr = np.asarray(img, dtype=np.float64)
    arr = np.clip(arr / 257.0, 0, 255).round().astype(np.uint8)
    return PIL.Image.fromarray(np.repeat(arr[..., None], 3, axis=-1)), '16bit'
  if mode == 'P' and 'transparency' in img.info:
    img, mode = img.convert('RGBA'), 'RGBA'
  if mode in ('RGBA', 'LA', 'PA', 'RGBa', 'La'):
    # Transparent pixels go to white, as a viewer would show them, instead of their arbitrary stored colour.
    rgba = img.convert('RGBA')
    white = PIL.Image.new('RGBA', rgba.size, (255, 255, 255, 255))
    return PIL.Image.alpha_composite(white, rgba).convert('RGB'), 'rgba'
  kind = {'CMYK': 'cmyk', 'L': 'grayscale', '1': 'grayscale', 'P': 'palette'}.get(mode, 'other_mode')
  return img.convert('RGB'), kind


def decode_image(data: bytes, min_side: int = MIN_SIDE) -> tuple[np.ndarray | None, str | None]:
  """Decodes encoded image bytes to RGB, never raising on bad input.

  Args:
    data: encoded image file contents (any format PIL reads).
    min_side: images whose shorter side is below this are skipped as 'tiny'.

  Returns:
    (img_HWC uint8 or None, problem): problem is None for a clean RGB 8-bit image, one of `CONVERTED` when
    the image was converted to RGB, or one of `SKIPPED` (with img None) when it cannot be used.
  """
  if not data:
    return None, 'zero_byte'
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')  # PIL warns on odd EXIF / palette data; the result is what matters.
      with PIL.Image.open(io.BytesIO(data)) as img:
        img.load()
        rgb, problem = _to_rgb(img)
        arr = np.asarray(rgb, dtype=np.uint8)
  except OSError as e:
    return None, 'truncated' if 'truncated' in str(e) else 'corrupt'
  except Exception:  # pylint: disable=broad-except  # PIL raises many types on garbage; all mean corrupt.
    return None, 'corrupt'
  if min(arr.shape[:2]) < min_side:
    return None, 'tiny'
  return arr, problem


def as_rgb(img: np.ndarray) -> tuple[np.ndarray, str | None]:
  """Brings a decoded image array ([H, W], [H, W, 1|2|3|4], uint8 or uint16) to uint8 [H, W, 3].

  Returns (img_HWC uint8, problem) with problem None when nothing changed, else one of `CONVERTED`.
  """
  problem = None
  if img.dtype != np.uint8:
    scale = 257.0 if img.dtype == np.uint16 else (255.0 if img.dtype.kind == 'f' and img.max() <= 1.0 else 1.0)
    img, problem = np.clip(img / scale, 0, 255).round().astype(np.uint8), '16bit'
  if img.ndim == 2:
    img = img[..., None]
  channels = img.shape[-1]
  if channels in (2, 4):  # Gray or colour with alpha: composite over white.
    alpha = img[..., -1:].astype(np.float32) / 255.0
    img = (img[..., :-1] * alpha + 255.0 * (1.0 - alpha)).round().astype(np.uint8)
    problem = problem or 'rgba'
  if img.shape[-1] == 1:
    img, problem = np.repeat(img, 3, axis=-1), problem or 'grayscale'
  return img, problem


def resize_shorter(img_HWC: np.ndarray, size: int) -> np.ndarray:
  """Lanczos-resizes so the shorter side is `size`; the longer side is truncated as torchvision does."""
  h, w = img_HWC.shape[:2]
  if min(h, w) == size:
    return img_HWC
  if w <= h:
    new_w, new_h = size, int(size * h / w)
  else:
    new_w, new_h = int(size * w / h), size
  return np.asarray(PIL.Image.fromarray(img_HWC).resize((new_w, new_h), PIL.Image.LANCZOS))


def center_crop(img_HWC: np.ndarray, size: int) -> np.ndarray:
  h, w = img_HWC.shape[:2]
  top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
  return img_HWC[top:top + size, left:left + size]


def random_crop(img_HWC: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
  h, w = img_HWC.shape[:2]
  top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
  return img_HWC[top:top + size, left:left + size]


def to_signed_unit(img_HWC: np.ndarray) -> np.ndarray:
  """uint8 [0, 255] -> float32 [-1, 1]."""
  return img_HWC.astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)


def mid_size(image_size: int, mid_ratio: float = MID_RATIO) -> int:
  return round(mid_ratio * image_size)


def train_image(img_HWC: np.ndarray, image_size: int, rng: np.random.Generator, *, hflip: bool,
                mid_ratio: float = MID_RATIO) -> np.ndarray:
  """VAR train augmentation: optional flip, shorter side to mid size, random crop; -> float32 [R, R, 3]."""
  if hflip and rng.random() < 0.5:
    img_HWC = img_HWC[:, ::-1]
  img_HWC = resize_shorter(np.ascontiguousarray(img_HWC), mid_size(image_size, mid_ratio))
  return to_signed_unit(random_crop(img_HWC, image_size, rng))


def eval_image(img_HWC: np.ndarray, image_size: int, *, mid_ratio: float = MID_RATIO) -> np.ndarray:
  """VAR eval preprocessing: shorter side to mid size, centre crop; -> float32 [R, R, 3]."""
  img_HWC = resize_shorter(img_HWC, mid_size(image_size, mid_ratio))
  return to_signed_unit(center_crop(img_HWC, image_size))


def crop_variant(img_HWC: np.ndarray, image_size: int, crop: int, flip: bool, rng: np.random.Generator, *,
                 mid_ratio: float = MID_RATIO) -> np.ndarray:
  """A fixed augmentation for pre-tokenization: crop 0 is the centre crop, crop k > 0 a random crop drawn
  from `rng`; `flip` mirrors the result. -> float32 [R, R, 3]."""
  img_HWC = resize_shorter(img_HWC, mid_size(image_size, mid_ratio))
  img_HWC = center_crop(img_HWC, image_size) if crop == 0 else random_crop(img_HWC, image_size, rng)
  if flip:
    img_HWC = img_HWC[:, ::-1]
  return to_signed_unit(img_HWC)
