"""The operations of the automatic augmentation policies, as few passes over the pixels as
their definitions allow.

An `Op` is a name and one value. Geometric ops are 3x3 forward maps in output pixels, which
the train transform multiplies into its single warp (no extra resample). Photometric ops
run on the warped uint8 image in order, through `apply_photometric`:

- per-channel ops are 256-entry lookup tables, PIL-exact (ImageOps / ImageEnhance),
  composed while consecutive into ONE table applied in one pass; those that read the
  histogram (autocontrast, equalize, contrast's mean) get it from one C histogram of the
  image, pushed through the pending table (exact);
- colour (saturation) mixes channels: a 3x4 colour matrix, consecutive ones multiplied,
  applied in one C pass (within 1-2 levels of PIL, which rounds in between);
- sharpness blends with a 3x3 smoothing filter: PIL-exact, the filter in NumPy (2.5x faster
  than PIL's).

Values: rotate in degrees counter-clockwise about the centre; shear_x/shear_y s as PIL's
inverse map (1, s, 0, 0, 1, 0) / (1, 0, 0, s, 1, 0) about the top-left corner (timm and
torchvision); translate_x/translate_y in output pixels (positive: right/down); the enhance
ops a blend factor (1 = identity); posterize the bits kept; solarize the threshold;
solarize_add the amount added below 128.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

GRAY = np.array([0.299, 0.587, 0.114])  # ITU-R 601 luma, as PIL and torchvision.
GEOMETRIC = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
PHOTOMETRIC = ("brightness", "color", "contrast", "sharpness", "posterize", "solarize",
               "solarize_add", "autocontrast", "equalize", "invert")
OPS = ("identity", *GEOMETRIC, *PHOTOMETRIC)
ENHANCE = ("brightness", "color", "contrast", "sharpness")  # Blend factors: 1 = identity.
_LEVELS = np.arange(256)


@dataclasses.dataclass(frozen=True)
class Op:
  name: str  # One of OPS.
  value: float = 0.0


# --- geometry ---------------------------------------------------------------------------


def rotation(degrees: float) -> np.ndarray:
  """3x3 counter-clockwise rotation about the origin (y points down)."""
  a = math.radians(degrees)
  return np.array([[math.cos(a), math.sin(a), 0], [-math.sin(a), math.cos(a), 0], [0, 0, 1]])


def shear(sx: float, sy: float = 0.0) -> np.ndarray:
  """3x3 forward shear whose inverse is PIL's (1, sx, 0, sy, 1, 0) for one of sx, sy."""
  return np.array([[1, -sx, 0], [-sy, 1, 0], [0, 0, 1]], dtype=np.float64)


def translation(tx: float, ty: float) -> np.ndarray:
  return np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]], dtype=np.float64)


def geometric_matrix(op: Op, size: tuple[int, int]) -> np.ndarray:
  """The 3x3 forward map (source -> output pixels) of one geometric op on a `size` image."""
  width, height = size
  match op.name:
    case "rotate":
      centre = translation(width / 2, height / 2)
      return centre @ rotation(op.value) @ np.linalg.inv(centre)
    case "shear_x":
      return shear(op.value)
    case "shear_y":
      return shear(0.0, op.value)
    case "translate_x":
      return translation(op.value, 0.0)
    case "translate_y":
      return translation(0.0, op.value)
  raise ValueError(f"{op.name!r} is not a geometric op; those are {GEOMETRIC}.")


def warp_matrix(ops: Sequence[Op], size: tuple[int, int]) -> np.ndarray:
  """The geometric ops of `ops`, in order, as one 3x3 forward map in output pixels."""
  matrix = np.eye(3)
  for op in ops:
    if op.name in GEOMETRIC:
      matrix = geometric_matrix(op, size) @ matrix
  return matrix


# --- colour matrices --------------------------------------------------------------------


def saturation(factor: float) -> np.ndarray:
  """3x3 blend of each pixel with its gray (ImageEnhance.Color's definition)."""
  return factor * np.eye(3) + (1 - factor) * np.outer(np.ones(3), GRAY)


def apply_colour(image: Image.Image, matrix: np.ndarray) -> Image.Image:
  """Applies a 3x4 colour matrix (RGB) or its gray-to-gray part (L) in C."""
  if image.mode == "RGB":
    return image.convert("RGB", tuple(matrix.reshape(-1)))
  gain, offset = float(matrix[0, :3].sum()), float(matrix[0, 3])
  lut = np.clip(np.arange(256) * gain + offset + 0.5, 0, 255).astype(np.uint8)
  return image.point(lut.tolist())


def sharpness(image: Image.Image, factor: float) -> Image.Image:
  """ImageEnhance.Sharpness: a blend with PIL's SMOOTH filter (kernel 1 1 1 / 1 5 1 / 1 1 1
  over 13, rounded; border pixels kept)."""
  x = np.asarray(image)
  x16 = x.astype(np.uint16)
  rows = x16[:, :-2] + x16[:, 1:-1]
  rows += x16[:, 2:]
  total = rows[:-2] + rows[1:-1]
  total += rows[2:]
  total += 4 * x16[1:-1, 1:-1]
  smooth = x.copy()  # total / 13 is never within 1/26 of a half: float32 rounds it exactly.
  smooth[1:-1, 1:-1] = (total * np.float32(2) + np.float32(13)) * np.float32(1 / 26)
  return Image.blend(Image.fromarray(smooth), image, factor)


# --- lookup tables (one row of 256 per band), as PIL computes them ----------------------


def blend_lut(degenerate: float, factor: float) -> np.ndarray:
  """Image.blend(constant `degenerate`, image, factor) per level: float32, clipped, truncated."""
  d = np.float32(degenerate)
  out = d + np.float32(factor) * (_LEVELS.astype(np.float32) - d)
  return np.clip(out, 0, 255).astype(np.uint8)


def posterize_lut(bits: int) -> np.ndarray:
  return (_LEVELS & ~(2 ** (8 - int(bits)) - 1)).astype(np.uint8)


def solarize_lut(threshold: float) -> np.ndarray:
  return np.where(_LEVELS < threshold, _LEVELS, 255 - _LEVELS).astype(np.uint8)


def solarize_add_lut(add: float) -> np.ndarray:
  return np.where(_LEVELS < 128, np.minimum(255, _LEVELS + int(add)), _LEVELS).astype(np.uint8)


def autocontrast_lut(histogram: np.ndarray) -> np.ndarray:
  """ImageOps.autocontrast (no cutoff) for each band of a [bands, 256] histogram."""
  luts = []
  for h in histogram:
    used = np.flatnonzero(h)
    if len(used) < 2:
      luts.append(_LEVELS.astype(np.uint8))
      continue
    scale = 255.0 / (used[-1] - used[0])
    luts.append(np.clip(np.trunc(_LEVELS * scale - used[0] * scale), 0, 255).astype(np.uint8))
  return np.stack(luts)


def equalize_lut(histogram: np.ndarray) -> np.ndarray:
  """ImageOps.equalize for each band of a [bands, 256] histogram."""
  luts = []
  for h in histogram.astype(np.int64):
    used = h[h > 0]
    step = (used.sum() - used[-1]) // 255 if len(used) > 1 else 0
    if not step:
      luts.append(_LEVELS.astype(np.uint8))
      continue
    n = step // 2 + np.concatenate([[0], np.cumsum(h)[:-1]])
    luts.append(np.minimum(n // step, 255).astype(np.uint8))
  return np.stack(luts)


class _Pending:
  """An image with one composed lookup table or one colour matrix not applied yet."""

  def __init__(self, image: Image.Image, matrix: np.ndarray | None):
    self.image = image
    self.bands = len(image.getbands())
    self.lut: np.ndarray | None = None  # uint8 [bands, 256].
    self.matrix = matrix  # 3x4 (a gray image: its gray-to-gray part, see apply_colour).
    self._histogram: np.ndarray | None = None  # Of self.image.

  def histogram(self) -> np.ndarray:
    """[bands, 256] pixel counts of the image with the pending table applied."""
    self._apply_matrix()
    if self._histogram is None:
      self._histogram = np.asarray(self.image.histogram(), np.int64).reshape(self.bands, 256)
    if self.lut is None:
      return self._histogram
    return np.stack([np.bincount(l, weights=h, minlength=256).astype(np.int64)
                     for l, h in zip(self.lut, self._histogram)])

  def mean_gray(self) -> float:
    """Mean luma, from the channel means (PIL rounds the luma of each pixel first)."""
    h = self.histogram()
    means = h @ _LEVELS / h.sum(axis=1)
    return float(means[0] if self.bands == 1 else GRAY @ means)

  def map(self, lut: np.ndarray) -> None:
    """Appends a per-band table ([256] for every band, or [bands, 256])."""
    self._apply_matrix()
    lut = np.broadcast_to(lut, (self.bands, 256))
    self.lut = lut if self.lut is None else np.take_along_axis(lut, self.lut.astype(np.intp), 1)

  def mix(self, matrix: np.ndarray) -> None:
    """Appends a 3x3 colour matrix (RGB; a gray image is left as it is)."""
    if self.bands != 3:
      return
    self._apply_lut()
    matrix = np.hstack([matrix, np.zeros((3, 1))])
    if self.matrix is not None:
      matrix = matrix @ np.vstack([self.matrix, [0, 0, 0, 1]])
    self.matrix = matrix

  def filter(self, fn) -> None:
    """Applies fn(image) -> image (a spatial op) to the image with everything pending."""
    self.image, self._histogram = fn(self.result()), None

  def result(self) -> Image.Image:
    self._apply_lut()
    self._apply_matrix()
    return self.image

  def _apply_lut(self) -> None:
    if self.lut is not None and not (self.lut == _LEVELS).all():
      self.image, self._histogram = self.image.point(self.lut.reshape(-1).tolist()), None
    self.lut = None

  def _apply_matrix(self) -> None:
    if self.matrix is not None and not np.array_equal(self.matrix, np.eye(3, 4)):
      self.image, self._histogram = apply_colour(self.image, self.matrix), None
    self.matrix = None


def apply_photometric(image: Image.Image, ops: Sequence[Op],
                      matrix: np.ndarray | None = None) -> Image.Image:
  """Applies a 3x4 colour `matrix` (if any), then the photometric ops of `ops` in order
  (others are skipped), to an L/RGB image."""
  pixels = _Pending(image, matrix)
  for op in ops:
    if op.name in ("identity", *GEOMETRIC) or (op.name in ENHANCE and op.value == 1):
      continue
    if op.name == "color":
      pixels.mix(saturation(op.value))
    elif op.name == "sharpness":
      pixels.filter(lambda im, f=op.value: sharpness(im, f))
    else:
      pixels.map(_lut(op, pixels))
  return pixels.result()


def _lut(op: Op, pixels: _Pending) -> np.ndarray:
  v = op.value
  match op.name:
    case "brightness":
      return blend_lut(0.0, v)
    case "contrast":
      return blend_lut(int(pixels.mean_gray() + 0.5), v)
    case "posterize":
      return posterize_lut(int(v))
    case "solarize":
      return solarize_lut(v)
    case "solarize_add":
      return solarize_add_lut(v)
    case "invert":
      return (255 - _LEVELS).astype(np.uint8)
    case "autocontrast":
      return autocontrast_lut(pixels.histogram())
    case "equalize":
      return equalize_lut(pixels.histogram())
  raise ValueError(f"Unknown augmentation op {op.name!r}; known: {OPS}.")
