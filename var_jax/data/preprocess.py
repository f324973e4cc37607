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

from var_jax.data.config import MID_RATIO
from var_jax.data.config import MIN_SIDE

# Problems `decode_image` reports. Skipped ones yield no image; converted ones yield an RGB image.
SKIPPED = ('zero_byte', 'truncated', 'corrupt', 'tiny')
CONVERTED = ('cmyk', 'grayscale', 'rgba', 'palette', '16bit', 'other_mode')


# PIL modes that only PIL can bring to RGB, and what converting them counts as.
_PIL_CONVERTED = {'CMYK': 'cmyk', 'P': 'palette', 'PA': 'palette', '1': 'grayscale', 'YCbCr': 'other_mode',
                  'LAB': 'other_mode', 'HSV': 'other_mode'}


def as_rgb(img: np.ndarray) -> tuple[np.ndarray, str | None]:
  """Brings a decoded image array ([H, W] or [H, W, 1|2|3|4]; uint8, 16-bit or float) to uint8 [H, W, 3].

  Alpha is composited over white (as a viewer shows transparent pixels), gray is repeated, 16-bit values keep
  their top 8 bits. Returns (img_HWC uint8, problem): None when nothing changed, else one of `CONVERTED`.
  """
  problem = None
  if img.dtype != np.uint8:
    if img.dtype.kind == 'f':
      scale = 1.0 / 255.0 if img.max() <= 1.0 else 257.0
    else:
      scale = 257.0  # 16-bit range (PIL gives 16-bit PNGs as int32 'I' images).
    img, problem = np.clip(np.asarray(img, np.float64) / scale, 0, 255).round().astype(np.uint8), '16bit'
  if img.ndim == 2:
    img = img[..., None]
  if img.shape[-1] in (2, 4):
    alpha = img[..., -1:].astype(np.float32) / 255.0
    img = (img[..., :-1] * alpha + 255.0 * (1.0 - alpha)).round().astype(np.uint8)
    problem = problem or 'rgba'
  if img.shape[-1] == 1:
    img, problem = np.repeat(img, 3, axis=-1), problem or 'grayscale'
  return img, problem


def _loaded_rgb(img: PIL.Image.Image) -> tuple[np.ndarray, str | None]:
  """(uint8 RGB array, problem or None) of a loaded image."""
  pil_problem = _PIL_CONVERTED.get(img.mode)
  if pil_problem:
    has_alpha = img.mode == 'PA' or 'transparency' in img.info
    img = img.convert('RGBA' if has_alpha else 'RGB')
  arr, problem = as_rgb(np.asarray(img))
  return arr, pil_problem or problem


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
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # PIL warns on odd EXIF / palette data; the result is what matters.
    try:
      img = PIL.Image.open(io.BytesIO(data))  # reads the header only
    except Exception:  # pylint: disable=broad-except  # PIL raises many types on garbage; all mean corrupt.
      return None, 'corrupt'
    with img:
      try:
        img.load()
        arr, problem = _loaded_rgb(img)
      except OSError:  # a header PIL reads, then data that ends early (PIL's one error for it)
        return None, 'truncated'
      except Exception:  # pylint: disable=broad-except
        return None, 'corrupt'
  if min(arr.shape[:2]) < min_side:
    return None, 'tiny'
  return arr, problem


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
