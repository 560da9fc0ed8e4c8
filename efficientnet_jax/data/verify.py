"""Decode every image once before preparation; report bad files by name, never relabel."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from efficientnet_jax.data import transforms
from efficientnet_jax.data.layouts import Example

BAD_IMAGE_POLICIES = ("error", "skip")
REENCODE_QUALITY = 95


@dataclasses.dataclass(frozen=True)
class CheckedImage:
  """A decodable image, its size, and whether it must be re-encoded as RGB JPEG."""

  example: Example
  width: int
  height: int
  reencode: bool  # Not an RGB JPEG (grayscale, CMYK, PNG, ...).


@dataclasses.dataclass(frozen=True)
class BadImage:
  example: Example
  reason: str


def check_image(example: Example) -> CheckedImage | BadImage:
  """Fully decodes one image file."""
  try:
    with Image.open(example.path) as image:
      image.load()
      return CheckedImage(example, image.width, image.height,
                          reencode=image.format != "JPEG" or image.mode != "RGB")
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    return BadImage(example, f"{type(e).__name__}: {e}")


def check_images(examples: Sequence[Example], threads: int = 0,
                 description: str = "Verifying images") -> tuple[list[CheckedImage], list[BadImage]]:
  """Decodes all images in parallel (PIL releases the GIL); keeps the input order."""
  threads = threads or os.cpu_count() or 1
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    results = list(tqdm(pool.map(check_image, examples, chunksize=16), total=len(examples),
                        desc=description, unit="img"))
  good = [r for r in results if isinstance(r, CheckedImage)]
  bad = [r for r in results if isinstance(r, BadImage)]
  return good, bad


def stored_bytes(checked: CheckedImage) -> bytes:
  """The JPEG bytes to store: the file itself, or an RGB re-encoding of it."""
  with open(checked.example.path, "rb") as f:
    data = f.read()
  if not checked.reencode:
    return data
  with Image.open(io.BytesIO(data)) as image:
    buffer = io.BytesIO()
    transforms.convert_mode(image, "RGB").save(buffer, format="JPEG", quality=REENCODE_QUALITY)
  return buffer.getvalue()


def normalized_bbox(checked: CheckedImage) -> np.ndarray:
  """Devkit bbox (1-based, inclusive pixels) as TFDS's [ymin, xmin, ymax, xmax] in [0, 1].

  Images without a box (class folders) get the whole image.
  """
  if checked.example.bbox is None:
    return np.array([0.0, 0.0, 1.0, 1.0], np.float32)
  x1, y1, x2, y2 = checked.example.bbox
  w, h = checked.width, checked.height
  box = np.array([(y1 - 1) / h, (x1 - 1) / w, y2 / h, x2 / w], np.float32)
  return np.clip(box, 0.0, 1.0)


def describe_bad(bad: Sequence[BadImage], limit: int = 20) -> str:
  """A short report: count and the first `limit` file names with their reasons."""
  lines = [f"  {b.example.path}: {b.reason}" for b in bad[:limit]]
  if len(bad) > limit:
    lines.append(f"  ... and {len(bad) - limit} more")
  return f"{len(bad)} unreadable image(s):\n" + "\n".join(lines)
