"""Automatic augmentation policies: which ops an image gets, drawn from its record's RNG.

- randaugment: timm's 'rand-m{M}-mstd{S}-inc1' (RandAugment, Cubuk et al. 2019, as timm
  defines it): `num_ops` ops drawn with replacement from 15, each applied with probability
  0.5, at magnitude M in [0, 10] plus N(0, S) noise per op (S = inf: uniform in [0, M]),
  clipped to [0, 10]; timm's "increasing" ranges (stronger as M grows).
- trivialaugment: torchvision's TrivialAugmentWide: one op of 14 (identity included) at one
  of 31 magnitudes, both uniform.
- autoaugment: the ImageNet policy of AutoAugment (Cubuk et al. 2018) with torchvision's
  magnitudes: one of 25 two-op sub-policies, each op applied with its probability.
Signed magnitudes get a random sign. The ops and their values: augment_ops.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from efficientnet_jax.data.augment_ops import ENHANCE, Op

POLICIES = ("none", "randaugment", "trivialaugment", "autoaugment")
MAX_MAGNITUDE = 10.0  # timm's _LEVEL_DENOM: magnitude 10 is each op's full range.

_RAND_OPS = ("autocontrast", "equalize", "invert", "rotate", "posterize", "solarize",
             "solarize_add", "color", "contrast", "brightness", "sharpness", "shear_x",
             "shear_y", "translate_x", "translate_y")
_RAND_OP_PROB = 0.5

_TRIVIAL_OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate",
                "brightness", "color", "contrast", "sharpness", "posterize", "solarize",
                "autocontrast", "equalize")
_TRIVIAL_BINS = 31

# (op, probability, magnitude bin of 10 or None): Cubuk et al.'s ImageNet sub-policies.
IMAGENET_POLICY = (
    (("posterize", 0.4, 8), ("rotate", 0.6, 9)),
    (("solarize", 0.6, 5), ("autocontrast", 0.6, None)),
    (("equalize", 0.8, None), ("equalize", 0.6, None)),
    (("posterize", 0.6, 7), ("posterize", 0.6, 6)),
    (("equalize", 0.4, None), ("solarize", 0.2, 4)),
    (("equalize", 0.4, None), ("rotate", 0.8, 8)),
    (("solarize", 0.6, 3), ("equalize", 0.6, None)),
    (("posterize", 0.8, 5), ("equalize", 1.0, None)),
    (("rotate", 0.2, 3), ("solarize", 0.6, 8)),
    (("equalize", 0.6, None), ("posterize", 0.4, 6)),
    (("rotate", 0.8, 8), ("color", 0.4, 0)),
    (("rotate", 0.4, 9), ("equalize", 0.6, None)),
    (("equalize", 0.0, None), ("equalize", 0.8, None)),
    (("invert", 0.6, None), ("equalize", 1.0, None)),
    (("color", 0.6, 4), ("contrast", 1.0, 8)),
    (("rotate", 0.8, 8), ("color", 1.0, 2)),
    (("color", 0.8, 8), ("solarize", 0.8, 7)),
    (("sharpness", 0.4, 7), ("invert", 0.6, None)),
    (("shear_x", 0.6, 5), ("equalize", 1.0, None)),
    (("color", 0.4, 0), ("equalize", 0.6, None)),
    (("equalize", 0.4, None), ("solarize", 0.2, 4)),
    (("solarize", 0.6, 5), ("autocontrast", 0.6, None)),
    (("invert", 0.6, None), ("equalize", 1.0, None)),
    (("color", 0.6, 4), ("contrast", 1.0, 8)),
    (("equalize", 0.8, None), ("equalize", 0.6, None)),
)
_AUTO_BINS = 10


@dataclasses.dataclass(frozen=True)
class Policy:
  """An automatic augmentation policy (config.data.auto_augment and the ra_* fields)."""

  name: str = "none"
  num_ops: int = 2
  magnitude: float = 9.0
  magnitude_std: float = 0.5

  def sample(self, rng: np.random.Generator, size: tuple[int, int]) -> list[Op]:
    """The ops, in order, for one `size` (width, height) output image."""
    if self.name == "randaugment":
      return self._randaugment(rng, size)
    if self.name == "trivialaugment":
      return [_trivial(rng, size)]
    if self.name == "autoaugment":
      return _autoaugment(rng, size)
    return []

  def _randaugment(self, rng: np.random.Generator, size: tuple[int, int]) -> list[Op]:
    ops = []
    for index in rng.integers(len(_RAND_OPS), size=self.num_ops):
      if rng.random() >= _RAND_OP_PROB:
        continue
      magnitude = self.magnitude
      if self.magnitude_std == math.inf:
        magnitude = rng.uniform(0, magnitude)
      elif self.magnitude_std > 0:
        magnitude = rng.normal(magnitude, self.magnitude_std)
      level = min(max(float(magnitude), 0.0), MAX_MAGNITUDE) / MAX_MAGNITUDE
      ops.append(_rand_op(_RAND_OPS[index], level, rng, size))
    return ops


def _signed(rng: np.random.Generator, value: float) -> float:
  return -value if rng.random() < 0.5 else value


def _rand_op(name: str, level: float, rng: np.random.Generator,
             size: tuple[int, int]) -> Op:
  """timm's increasing-severity argument of `name` at `level` in [0, 1]."""
  if name == "rotate":
    return Op(name, _signed(rng, 30 * level))
  if name in ("shear_x", "shear_y"):
    return Op(name, _signed(rng, 0.3 * level))
  if name in ("translate_x", "translate_y"):
    return Op(name, _signed(rng, 0.45 * level) * size[name == "translate_y"])
  if name in ENHANCE:
    return Op(name, max(0.1, 1.0 + _signed(rng, 0.9 * level)))
  if name == "posterize":
    return Op(name, 4 - int(4 * level))
  if name == "solarize":
    return Op(name, 256 - int(256 * level))
  if name == "solarize_add":
    return Op(name, int(110 * level))
  return Op(name)


def _binned(name: str, index: int, bins: int, rng: np.random.Generator,
            size: tuple[int, int], wide: bool) -> Op:
  """torchvision's magnitude of bin `index` of `bins` (TrivialAugmentWide's ranges if
  `wide`, else AutoAugment's)."""
  f = index / (bins - 1)
  if name == "rotate":
    return Op(name, _signed(rng, (135.0 if wide else 30.0) * f))
  if name in ("shear_x", "shear_y"):
    return Op(name, _signed(rng, (0.99 if wide else 0.3) * f))
  if name in ("translate_x", "translate_y"):
    extent = 32.0 if wide else 150 / 331 * size[name == "translate_y"]
    return Op(name, float(int(_signed(rng, extent * f))))
  if name in ENHANCE:
    return Op(name, 1.0 + _signed(rng, (0.99 if wide else 0.9) * f))
  if name == "posterize":
    return Op(name, 8 - int(np.round(f * (6 if wide else 4))))
  if name == "solarize":
    return Op(name, 255.0 * (1 - f))
  return Op(name)


def _trivial(rng: np.random.Generator, size: tuple[int, int]) -> Op:
  name = _TRIVIAL_OPS[rng.integers(len(_TRIVIAL_OPS))]
  return _binned(name, int(rng.integers(_TRIVIAL_BINS)), _TRIVIAL_BINS, rng, size, wide=True)


def _autoaugment(rng: np.random.Generator, size: tuple[int, int]) -> list[Op]:
  ops = []
  for name, prob, index in IMAGENET_POLICY[rng.integers(len(IMAGENET_POLICY))]:
    if rng.random() < prob:
      ops.append(_binned(name, index or 0, _AUTO_BINS, rng, size, wide=False))
  return ops
