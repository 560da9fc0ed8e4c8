"""Decode and augment one record with PIL, in uint8 throughout.

Train: decode (JPEG `draft` shrinks in libjpeg; stored pixels are wrapped) -> ONE affine
warp combining crop/resize, flip, rotation, translation, zoom and shear, and the geometric
ops of the automatic policy (data.auto_augment) -> colour jitter as ONE 3x4 colour matrix
-> the policy's photometric ops (augment_ops) -> random erasing (erasing).
Eval: decode -> antialiased resize of a central box. Both return {'image': uint8 [H, W, C],
'label': int32}; the per-record RNG comes from Grain (`random_map`), so results do not
depend on the number of workers.
"""

from __future__ import annotations

import dataclasses
import io
import math
from typing import Any

import grain
import ml_collections
import numpy as np
from PIL import Image

from efficientnet_jax.data import augment, erasing
from efficientnet_jax.data.augment_ops import (GRAY, apply_photometric, rotation, saturation,
                                              shear, warp_matrix)
from efficientnet_jax.data.augment_ops import apply_colour  # noqa: F401 (T.apply_colour)
from efficientnet_jax.data.errors import DataError

RESAMPLING = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
              "bicubic": Image.Resampling.BICUBIC}
TRAIN_CROPS = ("resize", "random_resized_crop")
TRAIN_WARPS = ("supersample", *RESAMPLING)
EVAL_RESIZES = ("square", "shorter_side")
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322],
                        [0.211, -0.523, 0.312]])

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels (continuous coords).


@dataclasses.dataclass(frozen=True)
class Options:
  """The transform knobs of config.data (see efficientnet_jax/config.py for their meaning)."""

  image_size: int = 224
  channels: int = 3
  crop_to_bbox: bool = False
  bbox_margin: float = 0.0
  interpolation: str = "bilinear"
  train_warp: str = "supersample"
  jpeg_draft: bool = True
  train_crop: str = "resize"
  rrc_scale: tuple[float, float] = (0.25, 1.0)
  rrc_ratio: tuple[float, float] = (3 / 4, 4 / 3)
  hflip: float = 0.0
  rotate: float = 0.0
  translate: float = 0.0
  scale: tuple[float, float] = (1.0, 1.0)
  shear: float = 0.0
  fill: int = 0
  brightness: float = 0.0
  contrast: float = 0.0
  saturation: float = 0.0
  hue: float = 0.0
  auto_augment: str = "none"
  ra_num_ops: int = 2
  ra_magnitude: float = 9.0
  ra_magnitude_std: float = 0.5
  erase_prob: float = 0.0
  erase_area: tuple[float, float] = (0.02, 1 / 3)
  erase_aspect: tuple[float, float] = (0.3, 1 / 0.3)
  erase_count: tuple[int, int] = (1, 1)
  erase_mode: str = "pixel"
  eval_resize: str = "square"
  crop_pct: float = 1.0
  # The device's normalization of the channels (pixels / 255 units), for the erasing fills:
  # config.data's mean/std, or gray_mean/gray_std with one channel.
  mean: tuple[float, ...] = (0.470, 0.460, 0.455)
  std: tuple[float, ...] = (0.267, 0.266, 0.270)

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> Options:
    """Reads the fields of config.data that this module uses and checks them."""
    # pipeline imports this module.
    from efficientnet_jax.data.pipeline import normalization  # pylint: disable=g-import-not-at-top

    values = {f.name: config[f.name] for f in dataclasses.fields(cls)
              if f.name not in ("mean", "std")}
    values["mean"], values["std"] = normalization(config)  # Of the configured channels.
    values = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in values.items()}
    options = cls(**values)
    area, aspect, count = options.erase_area, options.erase_aspect, options.erase_count
    checks = [
        ("interpolation", options.interpolation in RESAMPLING, tuple(RESAMPLING)),
        ("train_crop", options.train_crop in TRAIN_CROPS, TRAIN_CROPS),
        ("train_warp", options.train_warp in TRAIN_WARPS, TRAIN_WARPS),
        ("eval_resize", options.eval_resize in EVAL_RESIZES, EVAL_RESIZES),
        ("channels", options.channels in (1, 3), (1, 3)),
        ("crop_pct", 0 < options.crop_pct <= 1, "(0, 1]"),
        ("auto_augment", options.auto_augment in augment.POLICIES, augment.POLICIES),
        ("ra_num_ops", options.ra_num_ops >= 0, ">= 0"),
        ("ra_magnitude", 0 <= options.ra_magnitude <= augment.MAX_MAGNITUDE,
         f"[0, {augment.MAX_MAGNITUDE:g}]"),
        ("ra_magnitude_std", options.ra_magnitude_std >= 0, ">= 0 (inf: uniform in [0, m])"),
        ("erase_prob", 0 <= options.erase_prob <= 1, "[0, 1]"),
        ("erase_area", _pair(area) and 0 < area[0] <= area[1] <= 1,
         "(min, max), 0 < min <= max <= 1"),
        ("erase_aspect", _pair(aspect) and 0 < aspect[0] <= aspect[1],
         "(min, max), 0 < min <= max"),
        ("erase_count", _pair(count) and 1 <= count[0] <= count[1],
         "(min, max), 1 <= min <= max"),
        ("erase_mode", options.erase_mode in erasing.MODES, erasing.MODES),
    ]
    for name, ok, allowed in checks:
      if not ok:
        raise DataError(f"config.data.{name}={getattr(options, name)!r}; allowed: {allowed}.")
    return options

  @property
  def mode(self) -> str:
    return "RGB" if self.channels == 3 else "L"

  @property
  def policy(self) -> augment.Policy:
    return augment.Policy(self.auto_augment, self.ra_num_ops, self.ra_magnitude,
                          self.ra_magnitude_std)

  @property
  def eraser(self) -> erasing.Erasing:
    return erasing.Erasing(self.erase_prob, self.erase_area, self.erase_aspect,
                           self.erase_count, self.erase_mode, self.mean, self.std)


def _pair(value: Any) -> bool:
  return isinstance(value, tuple) and len(value) == 2


@dataclasses.dataclass(frozen=True)
class Geometry:
  """Parameters of the single train warp."""

  box: Box  # Source region mapped onto the whole output (before the affine part).
  flip: bool = False
  angle: float = 0.0  # Degrees, counter-clockwise.
  translate: tuple[float, float] = (0.0, 0.0)  # Output pixels.
  scale: float = 1.0
  shear: float = 0.0  # Degrees (x-shear).
  post: np.ndarray | None = None  # 3x3 forward map in output pixels applied last (policy).


# --- decoding ---------------------------------------------------------------------------


def open_image(data: bytes | np.ndarray, file_name: str = "") -> Image.Image:
  """Opens encoded image bytes lazily (only the header is read), or wraps stored uint8
  pixels (storage 'decoded': nothing to decode)."""
  if isinstance(data, np.ndarray):
    return Image.fromarray(data)
  try:
    return Image.open(io.BytesIO(data))
  except (OSError, ValueError) as e:
    raise DataError(f"Cannot decode image {file_name!r}: {e}. Prepare the data again from "
                    "the raw copy (preparation verifies every image).") from e


def load(image: Image.Image, mode: str, box: Box, out_size: tuple[int, int], draft: bool,
         file_name: str = "") -> tuple[Image.Image, Box]:
  """Decodes `image` in `mode`, just large enough to map `box` onto `out_size`.

  JPEGs decode at 1/2, 1/4 or 1/8 scale in libjpeg (`draft`); other images are shrunk by an
  integer box filter until less than 2x larger than needed. Returns the image and `box`
  in its coordinates.
  """
  width, height = image.size
  need = (out_size[0] / (box[2] - box[0]), out_size[1] / (box[3] - box[1]))  # Output px per source px.
  try:
    if draft and image.format == "JPEG":
      image.draft(mode, (math.ceil(width * need[0]), math.ceil(height * need[1])))
    image.load()
  except (OSError, ValueError) as e:
    raise DataError(f"Cannot decode image {file_name!r}: {e}. Prepare the data again from "
                    "the raw copy (preparation verifies every image).") from e
  image = convert_mode(image, mode)
  fx, fy = image.width / width, image.height / height
  factor = int(min(fx / need[0], fy / need[1]))
  if factor >= 2:
    image = image.reduce(factor)
    fx, fy = image.width / width, image.height / height
  return image, (box[0] * fx, box[1] * fy, box[2] * fx, box[3] * fy)


def convert_mode(image: Image.Image, mode: str) -> Image.Image:
  """`image` in mode 'RGB' or 'L'. 16-bit grayscale (PNG 'I;16', 'I') is scaled to 8 bits,
  where PIL's own conversion clips it at 255 (a 0..65535 gradient would turn white)."""
  if image.mode in _SIXTEEN_BIT or (image.mode == "I" and np.asarray(image).max() > 255):
    levels = np.asarray(image, np.uint32)
    image = Image.fromarray(((levels * 255 + 32767) // 65535).astype(np.uint8), "L")
  return image if image.mode == mode else image.convert(mode)


def region(size: tuple[int, int], bbox: np.ndarray | None, margin: float) -> Box:
  """The whole image, or the normalized [ymin, xmin, ymax, xmax] bbox plus a margin."""
  width, height = size
  if bbox is None:
    return (0.0, 0.0, float(width), float(height))
  ymin, xmin, ymax, xmax = (float(v) for v in bbox)
  mx, my = margin * (xmax - xmin), margin * (ymax - ymin)
  x0, x1 = max(0.0, xmin - mx) * width, min(1.0, xmax + mx) * width
  y0, y1 = max(0.0, ymin - my) * height, min(1.0, ymax + my) * height
  if x1 - x0 < 1 or y1 - y0 < 1:  # Degenerate box: use the whole image.
    return (0.0, 0.0, float(width), float(height))
  return (x0, y0, x1, y1)


# --- geometry ---------------------------------------------------------------------------


def random_resized_box(rng: np.random.Generator, area: Box, scale: tuple[float, float],
                       ratio: tuple[float, float]) -> Box:
  """torchvision's RandomResizedCrop box inside `area` (10 tries, then a central crop)."""
  x0, y0, x1, y1 = area
  width, height = x1 - x0, y1 - y0
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target = width * height * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    w, h = math.sqrt(target * aspect), math.sqrt(target / aspect)
    if 0 < w <= width and 0 < h <= height:
      left, top = x0 + rng.uniform(0, width - w), y0 + rng.uniform(0, height - h)
      return (left, top, left + w, top + h)
  aspect = min(max(width / height, ratio[0]), ratio[1])
  w, h = (width, width / aspect) if width / height < aspect else (height * aspect, height)
  left, top = x0 + (width - w) / 2, y0 + (height - h) / 2
  return (left, top, left + w, top + h)


def sample_geometry(rng: np.random.Generator, area: Box, options: Options) -> Geometry:
  """Draws the crop box, flip and affine parameters of one training example."""
  if options.train_crop == "random_resized_crop":
    box = random_resized_box(rng, area, options.rrc_scale, options.rrc_ratio)
  else:
    box = area
  size = options.image_size
  return Geometry(
      box=box,
      flip=bool(rng.random() < options.hflip),
      angle=float(rng.uniform(-options.rotate, options.rotate)),
      translate=(float(rng.uniform(-options.translate, options.translate) * size),
                 float(rng.uniform(-options.translate, options.translate) * size)),
      scale=float(rng.uniform(*options.scale)),
      shear=float(rng.uniform(-options.shear, options.shear)),
  )


def forward_matrix(geometry: Geometry, out_size: tuple[int, int]) -> np.ndarray:
  """3x3 map from source to output pixel coordinates: box->output, flip, then the affine
  part (rotation, shear, zoom about the output centre, then translation), then `post`."""
  x0, y0, x1, y1 = geometry.box
  out_w, out_h = out_size
  fit = np.array([[out_w / (x1 - x0), 0, -x0 * out_w / (x1 - x0)],
                  [0, out_h / (y1 - y0), -y0 * out_h / (y1 - y0)], [0, 0, 1]])
  flip = np.array([[-1, 0, out_w], [0, 1, 0], [0, 0, 1]]) if geometry.flip else np.eye(3)
  zoom = np.diag([geometry.scale, geometry.scale, 1.0])
  cx, cy = out_w / 2, out_h / 2
  to_centre = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]])
  back = np.array([[1, 0, cx + geometry.translate[0]], [0, 1, cy + geometry.translate[1]],
                   [0, 0, 1]])
  affine = (back @ rotation(geometry.angle) @ shear(math.tan(math.radians(geometry.shear))) @
            zoom @ to_centre @ flip @ fit)
  return affine if geometry.post is None else geometry.post @ affine


def warp(image: Image.Image, geometry: Geometry, out_size: tuple[int, int], method: str,
         fill: int) -> Image.Image:
  """Applies the whole geometry as one inverse-mapped affine resample.

  method: 'nearest' / 'bilinear' / 'bicubic' (PIL; only nearest has a fast path), or
  'supersample': nearest at twice the size, then a 2x2 box average (antialiased, ~2x faster
  than PIL's bilinear warp).
  """
  forward = forward_matrix(geometry, out_size)
  size, resample = out_size, RESAMPLING.get(method, Image.Resampling.NEAREST)
  if method == "supersample":
    forward, size = np.diag([2.0, 2.0, 1.0]) @ forward, (2 * out_size[0], 2 * out_size[1])
  inverse = np.linalg.inv(forward)
  fillcolor = fill if image.mode == "L" else (fill,) * len(image.getbands())
  warped = image.transform(size, Image.Transform.AFFINE, tuple(inverse[:2].reshape(-1)),
                           resample=resample, fillcolor=fillcolor)
  return warped.reduce(2) if method == "supersample" else warped


# --- colour -----------------------------------------------------------------------------


def colour_matrix(rng: np.random.Generator, mean_rgb: np.ndarray, options: Options) -> np.ndarray:
  """A random colour jitter as one 3x4 matrix [M | offset] on 0-255 RGB values.

  Brightness, contrast (towards the mean gray), saturation (towards each pixel's gray) and
  hue (rotation in YIQ) are all affine in RGB, so their random-order composition is one
  matrix. Unlike torchvision, intermediate values are not clipped.
  """
  steps = []
  if options.brightness:
    b = rng.uniform(1 - options.brightness, 1 + options.brightness)
    steps.append(lambda m: m * b)
  if options.contrast:
    c = rng.uniform(1 - options.contrast, 1 + options.contrast)
    steps.append(lambda m: _blend(m, c, np.full(3, GRAY @ (m @ np.append(mean_rgb, 1)))))
  if options.saturation and options.channels == 3:
    s = rng.uniform(1 - options.saturation, 1 + options.saturation)
    steps.append(lambda m: saturation(s) @ m)
  if options.hue and options.channels == 3:
    h = rng.uniform(-options.hue, options.hue) * 2 * math.pi
    rot = np.array([[1, 0, 0], [0, math.cos(h), -math.sin(h)], [0, math.sin(h), math.cos(h)]])
    hue = np.linalg.inv(_RGB_TO_YIQ) @ rot @ _RGB_TO_YIQ
    steps.append(lambda m: hue @ m)
  matrix = np.hstack([np.eye(3), np.zeros((3, 1))])
  for i in rng.permutation(len(steps)):
    matrix = steps[i](matrix)
  return matrix


def _blend(matrix: np.ndarray, factor: float, towards: np.ndarray) -> np.ndarray:
  blended = factor * matrix
  blended[:, 3] += (1 - factor) * towards
  return blended


def mean_rgb(image: Image.Image) -> np.ndarray:
  """Mean pixel as RGB (a gray image's mean thrice), via a C box reduction to 1x1."""
  return np.resize(np.asarray(image.reduce(image.size), np.float64).reshape(-1), 3)


def has_colour_jitter(options: Options) -> bool:
  return bool(options.brightness or options.contrast or
              (options.channels == 3 and (options.saturation or options.hue)))


# --- the Grain transforms ---------------------------------------------------------------


def to_array(image: Image.Image) -> np.ndarray:
  array = np.asarray(image, dtype=np.uint8)
  return array[..., None] if array.ndim == 2 else array


class TrainTransform(grain.transforms.RandomMap):
  """Record -> {'image': uint8 [S, S, C], 'label': int32}, randomly augmented."""

  def __init__(self, options: Options):
    self.options = options
    self.policy = options.policy
    self.eraser = options.eraser

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    o = self.options
    out = (o.image_size, o.image_size)
    image = open_image(element["image"], element["file_name"])
    area = region(image.size, element["bbox"] if o.crop_to_bbox else None, o.bbox_margin)
    geometry = sample_geometry(rng, area, o)
    ops = self.policy.sample(rng, out)
    image, box = load(image, o.mode, geometry.box, out, o.jpeg_draft, element["file_name"])
    geometry = dataclasses.replace(geometry, box=box, post=warp_matrix(ops, out) if ops else None)
    image = warp(image, geometry, out, o.train_warp, o.fill)
    jitter = colour_matrix(rng, mean_rgb(image), o) if has_colour_jitter(o) else None
    image = apply_photometric(image, ops, jitter)  # Colour ops right after join the jitter.
    return {"image": self.eraser(rng, to_array(image)), "label": np.int32(element["label"])}


def eval_box(area: Box, options: Options) -> Box:
  """The central box evaluation resizes to the output: all of `area` ('square') or the
  largest centred square ('shorter_side'), shrunk to `crop_pct` of its sides."""
  x0, y0, x1, y1 = area
  w, h = x1 - x0, y1 - y0
  if options.eval_resize == "shorter_side":
    w = h = min(w, h)
  w, h = w * options.crop_pct, h * options.crop_pct
  cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
  return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


class EvalTransform(grain.transforms.Map):
  """Record -> {'image': uint8 [S, S, C], 'label': int32, 'mask': True}, deterministic."""

  def __init__(self, options: Options):
    self.options = options

  def map(self, element: dict[str, Any]) -> dict[str, Any]:
    o = self.options
    out = (o.image_size, o.image_size)
    image = open_image(element["image"], element["file_name"])
    area = region(image.size, element["bbox"] if o.crop_to_bbox else None, o.bbox_margin)
    image, box = load(image, o.mode, eval_box(area, o), out, o.jpeg_draft, element["file_name"])
    image = image.resize(out, RESAMPLING[o.interpolation], box=box)
    return {"image": to_array(image), "label": np.int32(element["label"]),
            "mask": np.bool_(True)}
