"""Architecture specs: the B0 block table, compound scaling and per-variant defaults."""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class StageSpec:
  """One stage of the B0 table, before scaling."""

  expand_ratio: int
  kernel: int
  stride: int
  out_channels: int
  repeats: int


# EfficientNet-B0 (Tan & Le, 2019): (expand, kernel, stride, out channels, repeats).
B0_STAGES: tuple[StageSpec, ...] = tuple(
    StageSpec(*s)
    for s in (
        (1, 3, 1, 16, 1),
        (6, 3, 2, 24, 2),
        (6, 5, 2, 40, 2),
        (6, 3, 2, 80, 3),
        (6, 5, 1, 112, 3),
        (6, 5, 2, 192, 4),
        (6, 3, 1, 320, 1),
    )
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
SE_RATIO = 0.25


@dataclasses.dataclass(frozen=True)
class Variant:
  """Compound-scaling coefficients and defaults of one named model."""

  width: float
  depth: float
  resolution: int
  dropout: float
  lite: bool = False


# One table for every variant: (width, depth, resolution, dropout).
VARIANTS: dict[str, Variant] = {
    "b0": Variant(1.0, 1.0, 224, 0.2),
    "b1": Variant(1.0, 1.1, 240, 0.2),
    "b2": Variant(1.1, 1.2, 260, 0.3),
    "b3": Variant(1.2, 1.4, 300, 0.3),
    "b4": Variant(1.4, 1.8, 380, 0.4),
    "b5": Variant(1.6, 2.2, 456, 0.4),
    "b6": Variant(1.8, 2.6, 528, 0.5),
    "b7": Variant(2.0, 3.1, 600, 0.5),
    "lite0": Variant(1.0, 1.0, 224, 0.2, lite=True),
    "lite1": Variant(1.0, 1.1, 240, 0.2, lite=True),
    "lite2": Variant(1.1, 1.2, 260, 0.3, lite=True),
    "lite3": Variant(1.2, 1.4, 280, 0.3, lite=True),
    "lite4": Variant(1.4, 1.8, 300, 0.3, lite=True),
}


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
  """Scales a channel count by `width`, rounded to a multiple of `divisor` (TF rule)."""
  scaled = filters * width
  new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
  if new < 0.9 * scaled:
    new += divisor
  return int(new)


def round_repeats(repeats: int, depth: float) -> int:
  """Scales a stage's repeat count by `depth`, rounded up."""
  return int(math.ceil(depth * repeats))


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """One concrete (scaled) block of the network."""

  stage: int
  index: int
  in_channels: int
  out_channels: int
  expand_ratio: int
  kernel: int
  stride: int
  se_channels: int  # 0 = no squeeze-excite.
  drop_connect: float  # Stochastic-depth rate; only used with an identity skip.

  @property
  def name(self) -> str:
    return f"stages_{self.stage}_{self.index}"

  @property
  def has_skip(self) -> bool:
    return self.stride == 1 and self.in_channels == self.out_channels

  @property
  def mid_channels(self) -> int:
    return self.in_channels * self.expand_ratio


def get_variant(name: str) -> Variant:
  """Looks up a variant by name, with an error listing the valid names."""
  try:
    return VARIANTS[name]
  except KeyError:
    raise ValueError(
        f"Unknown EfficientNet variant {name!r} (config field model.name); "
        f"choose one of {', '.join(VARIANTS)}."
    ) from None


def stem_channels(variant: Variant) -> int:
  return STEM_CHANNELS if variant.lite else round_filters(STEM_CHANNELS, variant.width)


def head_channels(variant: Variant) -> int:
  return HEAD_CHANNELS if variant.lite else round_filters(HEAD_CHANNELS, variant.width)


def stage_repeats(variant: Variant) -> list[int]:
  """Repeats per stage; Lite keeps the first and last stage unscaled."""
  repeats = []
  for i, stage in enumerate(B0_STAGES):
    fixed = variant.lite and i in (0, len(B0_STAGES) - 1)
    repeats.append(stage.repeats if fixed else round_repeats(stage.repeats, variant.depth))
  return repeats


def build_blocks(variant: Variant, drop_connect_rate: float) -> list[BlockSpec]:
  """Scales the B0 table into the concrete block list of a variant.

  Drop-connect grows linearly with the global block index: rate * idx / num_blocks.
  """
  repeats = stage_repeats(variant)
  total = sum(repeats)
  blocks: list[BlockSpec] = []
  in_ch = stem_channels(variant)
  for i, (stage, n) in enumerate(zip(B0_STAGES, repeats)):
    out_ch = round_filters(stage.out_channels, variant.width)
    for j in range(n):
      se = 0 if variant.lite else max(1, int(in_ch * SE_RATIO))
      blocks.append(
          BlockSpec(
              stage=i,
              index=j,
              in_channels=in_ch,
              out_channels=out_ch,
              expand_ratio=stage.expand_ratio,
              kernel=stage.kernel,
              stride=stage.stride if j == 0 else 1,
              se_channels=se,
              drop_connect=drop_connect_rate * len(blocks) / total,
          )
      )
      in_ch = out_ch
  return blocks
