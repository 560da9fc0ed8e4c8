"""Decode every image once before preparation; report bad files by name, never relabel;
produce what each image is stored as."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import os
from collections.abc import Iterator, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from efficientnet_jax.data import transforms
from efficientnet_jax.data import storage as storage_lib
from efficientnet_jax.data.layouts import Example

BAD_IMAGE_POLICIES = ("error", "skip")
REENCODE_QUALITY = 95
_WINDOW = 256  # Images in flight when decoding in threads.


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
  results = list(_in_threads(check_image, examples, threads, description))
  good = [r for r in results if isinstance(r, CheckedImage)]
  bad = [r for r in results if isinstance(r, BadImage)]
  return good, bad


def _in_threads(fn, items: Sequence, threads: int, description: str) -> Iterator:
  """fn over items in `threads` threads (0: one per core), in order, with a progress bar;
  at most _WINDOW results wait to be taken."""
  threads = threads or os.cpu_count() or 1
  with concurrent.futures.ThreadPoolExecutor(threads) as pool, tqdm(
      total=len(items), desc=description, unit="img") as bar:
    for start in range(0, len(items), _WINDOW):
      for result in pool.map(fn, items[start:start + _WINDOW]):
        bar.update()
        yield result


def stored_images(checked: Sequence[CheckedImage], storage: storage_lib.Storage,
                  threads: int = 0) -> Iterator[bytes | np.ndarray]:
  """What each image is stored as under `storage`, in order (computed in threads)."""
  return _in_threads(lambda c: stored_image(c, storage), checked, threads,
                     f"Storing {storage.describe()}")


def stored_image(checked: CheckedImage, storage: storage_lib.Storage) -> bytes | np.ndarray:
  """JPEG bytes (original, reduced) or uint8 pixels (decoded) of one verified image.

  A reduced image that needs no reduction keeps its original bytes.
  """
  small = min(checked.width, checked.height) <= storage.size
  if storage.kind == "original" or (storage.kind == "reduced" and small):
    return stored_bytes(checked)
  with Image.open(checked.example.path) as image:
    return storage_lib.encode(transforms.convert_mode(image, "RGB"), storage)


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
