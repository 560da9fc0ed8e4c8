"""Architecture specs: each family's stage table (a block type per stage), compound scaling,
and the named architectures (b0…b7, lite0…lite4) with their defaults."""

from __future__ import annotations

import dataclasses
import math
from efficientnet_jax.errors import ConfigError

# Block types a stage can use (models/blocks.py builds each):
#   mbconv  [expand 1x1] -> depthwise kxk -> [squeeze-excite] -> project 1x1 [+ skip]
MBCONV = "mbconv"
BLOCK_TYPES = (MBCONV,)


@dataclasses.dataclass(frozen=True)
class StageSpec:
  """One stage of a family's table, before compound scaling."""

  block: str  # One of BLOCK_TYPES.
  expand_ratio: int
  kernel: int
  stride: int
  out_channels: int
  repeats: int
  se_ratio: float  # Squeeze-excite width as a fraction of the block's input channels; 0 = none.
  scale_depth: bool = True  # False: the repeats stay as in the table at every depth.


@dataclasses.dataclass(frozen=True)
class Family:
  """What the architectures of one family share: the stage table, stem, head, activation."""

  name: str
  stages: tuple[StageSpec, ...]
  stem_channels: int
  head_channels: int
  scale_stem_head: bool  # False: stem and head keep their widths at every width multiplier.
  activation: str  # "swish" or "relu6".


def _stages(rows: tuple[tuple, ...], se_ratio: float,
            fixed_depth: tuple[int, ...] = ()) -> tuple[StageSpec, ...]:
  """(expand, kernel, stride, out channels, repeats) rows of MBConv stages."""
  return tuple(StageSpec(MBCONV, *row, se_ratio=se_ratio, scale_depth=i not in fixed_depth)
               for i, row in enumerate(rows))


# EfficientNet-B0 (Tan & Le, 2019): (expand, kernel, stride, out channels, repeats).
_B0_ROWS = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
            (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
EFFICIENTNET = Family("efficientnet", _stages(_B0_ROWS, se_ratio=0.25), stem_channels=32,
                      head_channels=1280, scale_stem_head=True, activation="swish")
# EfficientNet-Lite: the B0 table without squeeze-excite, ReLU6, stem and head fixed, and
# the first and last stage not depth-scaled (TF efficientnet_lite_builder).
LITE = Family("lite", _stages(_B0_ROWS, se_ratio=0.0, fixed_depth=(0, len(_B0_ROWS) - 1)),
              stem_channels=32, head_channels=1280, scale_stem_head=False, activation="relu6")


@dataclasses.dataclass(frozen=True)
class ArchSpec:
  """A named architecture: its family scaled by width and depth, and its defaults."""

  family: Family
  width: float
  depth: float
  resolution: int
  dropout: float


# Every architecture by name: (family, width, depth, resolution, dropout).
ARCHS: dict[str, ArchSpec] = {
    "b0": ArchSpec(EFFICIENTNET, 1.0, 1.0, 224, 0.2),
    "b1": ArchSpec(EFFICIENTNET, 1.0, 1.1, 240, 0.2),
    "b2": ArchSpec(EFFICIENTNET, 1.1, 1.2, 260, 0.3),
    "b3": ArchSpec(EFFICIENTNET, 1.2, 1.4, 300, 0.3),
    "b4": ArchSpec(EFFICIENTNET, 1.4, 1.8, 380, 0.4),
    "b5": ArchSpec(EFFICIENTNET, 1.6, 2.2, 456, 0.4),
    "b6": ArchSpec(EFFICIENTNET, 1.8, 2.6, 528, 0.5),
    "b7": ArchSpec(EFFICIENTNET, 2.0, 3.1, 600, 0.5),
    "lite0": ArchSpec(LITE, 1.0, 1.0, 224, 0.2),
    "lite1": ArchSpec(LITE, 1.0, 1.1, 240, 0.2),
    "lite2": ArchSpec(LITE, 1.1, 1.2, 260, 0.3),
    "lite3": ArchSpec(LITE, 1.2, 1.4, 280, 0.3),
    "lite4": ArchSpec(LITE, 1.4, 1.8, 300, 0.3),
}


def get_arch(arch: str) -> ArchSpec:
  """Looks up an architecture by name, with an error listing the valid names."""
  try:
    return ARCHS[arch]
  except KeyError:
    raise ConfigError(f"Unknown architecture {arch!r} (config field model.arch); "
                     f"choose one of {', '.join(ARCHS)}.") from None


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

  block: str  # One of BLOCK_TYPES.
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


def stem_channels(spec: ArchSpec) -> int:
  f = spec.family
  return round_filters(f.stem_channels, spec.width) if f.scale_stem_head else f.stem_channels


def head_channels(spec: ArchSpec) -> int:
  f = spec.family
  return round_filters(f.head_channels, spec.width) if f.scale_stem_head else f.head_channels


def stage_repeats(spec: ArchSpec) -> list[int]:
  """Repeats per stage after depth scaling."""
  return [round_repeats(s.repeats, spec.depth) if s.scale_depth else s.repeats
          for s in spec.family.stages]


def build_blocks(spec: ArchSpec, drop_connect_rate: float) -> list[BlockSpec]:
  """Scales the family's table into the concrete block list of an architecture.

  Drop-connect grows linearly with the global block index: rate * idx / num_blocks.
  """
  repeats = stage_repeats(spec)
  total = sum(repeats)
  blocks: list[BlockSpec] = []
  in_ch = stem_channels(spec)
  for i, (stage, n) in enumerate(zip(spec.family.stages, repeats)):
    out_ch = round_filters(stage.out_channels, spec.width)
    for j in range(n):
      se = max(1, int(in_ch * stage.se_ratio)) if stage.se_ratio else 0
      blocks.append(BlockSpec(
          block=stage.block, stage=i, index=j, in_channels=in_ch, out_channels=out_ch,
          expand_ratio=stage.expand_ratio, kernel=stage.kernel,
          stride=stage.stride if j == 0 else 1, se_channels=se,
          drop_connect=drop_connect_rate * len(blocks) / total))
      in_ch = out_ch
  return blocks
