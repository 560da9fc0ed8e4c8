"""Random erasing (Zhong et al. 2017, as timm's RandomErasing) on the uint8 output image.

With probability `prob`, `count` boxes (uniform in [min, max]) are erased; each covers a
fraction of the image drawn uniformly from `area` and divided by `count`, with an aspect
(height / width) log-uniform in `aspect`, at a uniform position (10 tries each, as timm).
Images leave the workers as uint8 and are normalized on the device as
(x / 255 - mean) / std, so the fills are chosen in those units:
- "pixel": per-pixel, per-channel noise whose normalized values are N(0, 1) quantized to
  the uint8 grid: the level v has the normal probability of its bin
  [(v - 0.5) / 255 - mean, (v + 0.5) / 255 - mean] / std, the end levels absorbing the tails
  (values beyond 0 and 255, i.e. beyond -mean/std and (1 - mean)/std, are clipped); drawn
  by inverse CDF from 16-bit uniforms.
- "rand": one such noise colour per box;
- "const": the mean colour (0 after normalization, timm's constant).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

MODES = ("pixel", "rand", "const")
_TRIES = 10
_UNIFORM_BITS = 16


@dataclasses.dataclass(frozen=True)
class Erasing:
  """The config.data.erase_* fields, and the normalization (pixels / 255 units)."""

  prob: float = 0.0
  area: tuple[float, float] = (0.02, 1 / 3)
  aspect: tuple[float, float] = (0.3, 1 / 0.3)
  count: tuple[int, int] = (1, 1)
  mode: str = "pixel"
  mean: tuple[float, ...] = (0.5, 0.5, 0.5)
  std: tuple[float, ...] = (0.25, 0.25, 0.25)

  def boxes(self, rng: np.random.Generator, height: int,
            width: int) -> list[tuple[int, int, int, int]]:
    """(top, left, h, w) of each erased box of one image (none with probability 1 - prob)."""
    if rng.random() >= self.prob:
      return []
    count = int(rng.integers(self.count[0], self.count[1] + 1))
    log_aspect = (math.log(self.aspect[0]), math.log(self.aspect[1]))
    boxes = []
    for _ in range(count):
      for _ in range(_TRIES):
        target = rng.uniform(*self.area) * height * width / count
        aspect = math.exp(rng.uniform(*log_aspect))
        h, w = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if h < height and w < width:
          top, left = int(rng.integers(height - h + 1)), int(rng.integers(width - w + 1))
          boxes.append((top, left, h, w))
          break
    return boxes

  def __call__(self, rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Erases boxes of a uint8 [H, W, C] image (a copy when any)."""
    boxes = self.boxes(rng, image.shape[0], image.shape[1])
    if not boxes:
      return image
    image = np.array(image)
    for top, left, h, w in boxes:
      image[top:top + h, left:left + w] = self.fill(rng, (h, w) if self.mode == "pixel" else (1, 1),
                                                    image.shape[2])
    return image

  def fill(self, rng: np.random.Generator, shape: tuple[int, int],
           channels: int) -> np.ndarray:
    """uint8 [*shape, channels] fill values of this mode."""
    if self.mode == "const":
      mean = np.round(255 * np.asarray(self.mean[:channels]))
      return np.broadcast_to(mean.astype(np.uint8), (*shape, channels))
    table = normal_levels(self.mean[:channels], self.std[:channels])
    draws = rng.integers(2 ** _UNIFORM_BITS, size=(channels, *shape), dtype=np.uint16)
    return np.stack([np.take(table[c], draws[c]) for c in range(channels)], axis=-1)


@functools.lru_cache(maxsize=8)
def normal_levels(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
  """uint8 [C, 2^16]: the level of each 16-bit uniform draw, by inverse CDF, such that
  (level / 255 - mean) / std is N(0, 1) quantized to the uint8 grid (see the module doc)."""
  uniforms = (np.arange(2 ** _UNIFORM_BITS) + 0.5) / 2 ** _UNIFORM_BITS
  tables = []
  for m, s in zip(mean, std):
    edges = ((np.arange(255) + 0.5) / 255 - m) / s  # Upper edge of levels 0..254.
    cdf = np.array([0.5 * (1 + math.erf(e / math.sqrt(2))) for e in edges])
    tables.append(np.searchsorted(cdf, uniforms).astype(np.uint8))
  return np.stack(tables)
