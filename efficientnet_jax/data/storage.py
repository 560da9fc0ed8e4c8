"""How preparation stores images (config.data.storage), and whether a run fits what is stored.

  original  the source JPEG bytes (non-RGB or non-JPEG files re-encoded as RGB JPEG)
  reduced   shorter side reduced to `size` px (Lanczos), re-encoded as JPEG at `quality`
  decoded   uint8 RGB pixels, shorter side reduced to `size` px: nothing to decode when read

Images whose shorter side is already at most `size` are stored as in `original` (reduced)
or decoded at their own size (decoded): preparation never upsamples. Each storage is its
own TFDS builder config (`<tfds_dir>/stanford_cars/<name>/<version>`), so several coexist
under one tfds_dir; the prepared data records its storage in the TFDS metadata.
"""

from __future__ import annotations

import dataclasses
import io
import math
from typing import Any

import ml_collections
import numpy as np
from PIL import Image

from efficientnet_jax.data.errors import DataError
from efficientnet_jax.data.transforms import Options

KINDS = ("original", "reduced", "decoded")
# storage_size=0 stores ceil(AUTO_MARGIN * image_size): room for the default random zoom
# (up to 1.1) and for evaluation crops down to crop_pct 0.87 without upsampling.
AUTO_MARGIN = 1.15
_METADATA_KEYS = {"kind": "storage", "size": "storage_size", "quality": "storage_quality"}


@dataclasses.dataclass(frozen=True)
class Storage:
  """What a prepared copy holds: `kind` in KINDS, the stored shorter side and JPEG quality
  (0 where they do not apply)."""

  kind: str = "original"
  size: int = 0
  quality: int = 0

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> Storage:
    """The storage config.data asks for (storage, storage_size, storage_quality)."""
    kind = config.storage
    if kind not in KINDS:
      raise DataError(f"config.data.storage={kind!r}; choose one of {KINDS}.")
    if kind == "original":
      return cls()
    if config.storage_size < 0:
      raise DataError(f"config.data.storage_size={config.storage_size} must be >= 0 "
                      "(0: ceil(1.15 x image_size)).")
    # A bad image_size is reported by its own check.
    size = config.storage_size or max(1, math.ceil(AUTO_MARGIN * config.image_size))
    if kind == "decoded":
      return cls(kind, size)
    if not 1 <= config.storage_quality <= 100:
      raise DataError(f"config.data.storage_quality={config.storage_quality} must be in "
                      "1..100.")
    return cls(kind, size, config.storage_quality)

  @classmethod
  def from_metadata(cls, metadata: dict[str, Any] | None) -> Storage:
    """The storage a prepared copy records (copies without a record hold original JPEGs)."""
    metadata = metadata or {}
    if metadata.get("storage", "original") == "original":
      return cls()
    return cls(**{field: type(getattr(cls(), field))(metadata[key])
                  for field, key in _METADATA_KEYS.items() if key in metadata})

  def metadata(self) -> dict[str, Any]:
    return {key: getattr(self, field) for field, key in _METADATA_KEYS.items()}

  @property
  def name(self) -> str:
    """The TFDS builder config name, e.g. 'original', 'reduced258q90', 'decoded258'."""
    return self.kind + (str(self.size) if self.size else "") + (
        f"q{self.quality}" if self.quality else "")

  def describe(self) -> str:
    if self.kind == "original":
      return "original JPEGs"
    quality = f", JPEG quality {self.quality}" if self.quality else ""
    return f"{self.kind} images (shorter side {self.size} px{quality})"


def reduce_to(image: Image.Image, size: int) -> Image.Image:
  """`image` with its shorter side resized to `size` px (Lanczos); smaller ones as they are."""
  width, height = image.size
  shorter = min(width, height)
  if shorter <= size:
    return image
  scale = size / shorter
  out = (size if width == shorter else max(1, round(width * scale)),
         size if height == shorter else max(1, round(height * scale)))
  return image.resize(out, Image.Resampling.LANCZOS)


def encode(image: Image.Image, storage: Storage) -> bytes | np.ndarray:
  """The stored form of a decoded RGB image under a reduced or decoded `storage`."""
  image = reduce_to(image, storage.size)
  if storage.kind == "decoded":
    return np.asarray(image, np.uint8)
  buffer = io.BytesIO()
  image.save(buffer, format="JPEG", quality=storage.quality)
  return buffer.getvalue()


def shorter_sides_needed(options: Options) -> tuple[float, float]:
  """(plain view, most magnified augmentation): source shorter sides in px that map onto
  the output without upsampling.

  The plain view is the eval crop (image_size / crop_pct) and the unzoomed train resize;
  random zoom (scale[1]) and random-resized crops (sides down to about sqrt(rrc_scale[0]))
  magnify further.
  """
  view = options.image_size / options.crop_pct
  augmented = options.image_size * max(1.0, options.scale[1])
  if options.train_crop == "random_resized_crop":
    augmented /= math.sqrt(options.rrc_scale[0])
  return max(view, options.image_size), max(view, augmented)


def check_resolution(options: Options, storage: Storage, dataset_dir: str) -> str | None:
  """Raises if the run's plain view needs more pixels than stored; returns a warning when
  random crops or zoom (or crop_to_bbox) magnify some examples beyond them (a mild,
  intended upsample); None when the stored pixels cover the run."""
  if storage.kind == "original":
    return None
  view, augmented = shorter_sides_needed(options)
  if view > storage.size:
    raise DataError(
        f"{dataset_dir} holds {storage.describe()}, but image_size={options.image_size} with "
        f"crop_pct={options.crop_pct} needs {math.ceil(view)} px: prepare a copy that covers "
        f"it (--config.data.storage_size={math.ceil(view)} or more; 0 = ceil(1.15 x "
        "image_size)) or set --config.data.storage=original.")
  causes = ([f"random zoom/crops (up to {math.ceil(augmented)} px)"]
            if augmented > storage.size else [])
  causes += ["crop_to_bbox (boxes smaller than the image)"] if options.crop_to_bbox else []
  if not causes:
    return None
  return (f"{dataset_dir} holds {storage.describe()}; " + " and ".join(causes) + " magnify "
          "some examples beyond that, so those are upsampled (a larger "
          "--config.data.storage_size, or storage=original, avoids it).")
