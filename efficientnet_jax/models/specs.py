"""Architecture specs: each family's stage table (a block type per stage), compound scaling,
and the named architectures (b0…b7, lite0…lite4, v2_b0…v2_b3, v2_s, v2_m, v2_l, v2_xl) with
their defaults."""

from __future__ import annotations

import dataclasses
import math
from efficientnet_jax.errors import ConfigError

# Block types a stage can use (models/blocks.py builds each):
#   mbconv        [expand 1x1] -> depthwise kxk -> [squeeze-excite] -> project 1x1 [+ skip]
#   fused_mbconv  full kxk conv (expand, strided) -> project 1x1 [+ skip]; with expand ratio 1
#                 the kxk conv alone (to the output width, with activation) [+ skip]
MBCONV = "mbconv"
FUSED_MBCONV = "fused_mbconv"
BLOCK_TYPES = (MBCONV, FUSED_MBCONV)


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
  # Width rounding: a rounded-down width below round_limit x the scaled one gets one more
  # divisor (V1's 0.9; EfficientNetV2's code has no such step: 0).
  round_limit: float = 0.9


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




def _v2_stages(rows: tuple[tuple, ...]) -> tuple[StageSpec, ...]:
  """(block, expand, kernel, stride, out channels, repeats, se ratio) rows."""
  return tuple(StageSpec(*row) for row in rows)


# EfficientNetV2 (Tan & Le, 2021), the official TF tables (google/automl efficientnetv2/
# effnetv2_configs.py): Fused-MBConv early, MBConv with squeeze-excite (a quarter of the
# block's input channels) late; stem = the first stage's input width, head 1280 (x width).
_F, _M = FUSED_MBCONV, MBCONV
_V2_BASE_ROWS = ((_F, 1, 3, 1, 16, 1, 0.0), (_F, 4, 3, 2, 32, 2, 0.0), (_F, 4, 3, 2, 48, 2, 0.0),
                 (_M, 4, 3, 2, 96, 3, 0.25), (_M, 6, 3, 1, 112, 5, 0.25), (_M, 6, 3, 2, 192, 8, 0.25))
_V2_S_ROWS = ((_F, 1, 3, 1, 24, 2, 0.0), (_F, 4, 3, 2, 48, 4, 0.0), (_F, 4, 3, 2, 64, 4, 0.0),
              (_M, 4, 3, 2, 128, 6, 0.25), (_M, 6, 3, 1, 160, 9, 0.25), (_M, 6, 3, 2, 256, 15, 0.25))
_V2_M_ROWS = ((_F, 1, 3, 1, 24, 3, 0.0), (_F, 4, 3, 2, 48, 5, 0.0), (_F, 4, 3, 2, 80, 5, 0.0),
              (_M, 4, 3, 2, 160, 7, 0.25), (_M, 6, 3, 1, 176, 14, 0.25),
              (_M, 6, 3, 2, 304, 18, 0.25), (_M, 6, 3, 1, 512, 5, 0.25))
_V2_L_ROWS = ((_F, 1, 3, 1, 32, 4, 0.0), (_F, 4, 3, 2, 64, 7, 0.0), (_F, 4, 3, 2, 96, 7, 0.0),
              (_M, 4, 3, 2, 192, 10, 0.25), (_M, 6, 3, 1, 224, 19, 0.25),
              (_M, 6, 3, 2, 384, 25, 0.25), (_M, 6, 3, 1, 640, 7, 0.25))
_V2_XL_ROWS = ((_F, 1, 3, 1, 32, 4, 0.0), (_F, 4, 3, 2, 64, 8, 0.0), (_F, 4, 3, 2, 96, 8, 0.0),
               (_M, 4, 3, 2, 192, 16, 0.25), (_M, 6, 3, 1, 256, 24, 0.25),
               (_M, 6, 3, 2, 512, 32, 0.25), (_M, 6, 3, 1, 640, 8, 0.25))


def _v2_family(name: str, rows: tuple[tuple, ...], stem_channels: int) -> Family:
  return Family(name, _v2_stages(rows), stem_channels=stem_channels, head_channels=1280,
                scale_stem_head=True, activation="swish", round_limit=0.0)


V2_BASE = _v2_family("efficientnetv2-base", _V2_BASE_ROWS, 32)  # B0…B3 scale this one.
V2_S = _v2_family("efficientnetv2-s", _V2_S_ROWS, 24)
V2_M = _v2_family("efficientnetv2-m", _V2_M_ROWS, 24)
V2_L = _v2_family("efficientnetv2-l", _V2_L_ROWS, 32)
V2_XL = _v2_family("efficientnetv2-xl", _V2_XL_ROWS, 32)
V2_FAMILIES = (V2_BASE, V2_S, V2_M, V2_L, V2_XL)


@dataclasses.dataclass(frozen=True)
class ArchSpec:
  """A named architecture: its family scaled by width and depth, and its defaults."""

  family: Family
  width: float
  depth: float
  resolution: int
  dropout: float


# Every architecture by name: (family, width, depth, resolution, dropout). The resolution is
# the evaluation size (V2 trains the ImageNet models at less: 192…240 px for B0…B3, 300 px
# for S, 384 px for M/L/XL, with progressive learning).
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
    "v2_b0": ArchSpec(V2_BASE, 1.0, 1.0, 224, 0.2),
    "v2_b1": ArchSpec(V2_BASE, 1.0, 1.1, 240, 0.2),
    "v2_b2": ArchSpec(V2_BASE, 1.1, 1.2, 260, 0.3),
    "v2_b3": ArchSpec(V2_BASE, 1.2, 1.4, 300, 0.3),
    "v2_s": ArchSpec(V2_S, 1.0, 1.0, 384, 0.2),
    "v2_m": ArchSpec(V2_M, 1.0, 1.0, 480, 0.3),
    "v2_l": ArchSpec(V2_L, 1.0, 1.0, 480, 0.4),
    "v2_xl": ArchSpec(V2_XL, 1.0, 1.0, 512, 0.4),
}


def get_arch(arch: str) -> ArchSpec:
  """Looks up an architecture by name, with an error listing the valid names."""
  try:
    return ARCHS[arch]
  except KeyError:
    raise ConfigError(f"Unknown architecture {arch!r} (config field model.arch); "
                     f"choose one of {', '.join(ARCHS)}.") from None


def round_filters(filters: int, width: float, divisor: int = 8, round_limit: float = 0.9) -> int:
  """Scales a channel count by `width`, rounded to a multiple of `divisor` (TF rule); a result
  below `round_limit` times the scaled count gets one more divisor."""
  scaled = filters * width
  new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
  if new < round_limit * scaled:
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


def _width(spec: ArchSpec, channels: int) -> int:
  """A stage's channel count scaled by the architecture's width."""
  return round_filters(channels, spec.width, round_limit=spec.family.round_limit)


def stem_channels(spec: ArchSpec) -> int:
  f = spec.family
  return _width(spec, f.stem_channels) if f.scale_stem_head else f.stem_channels


def head_channels(spec: ArchSpec) -> int:
  f = spec.family
  return _width(spec, f.head_channels) if f.scale_stem_head else f.head_channels


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
    out_ch = _width(spec, stage.out_channels)
    for j in range(n):
      se = max(1, int(in_ch * stage.se_ratio)) if stage.se_ratio else 0
      blocks.append(BlockSpec(
          block=stage.block, stage=i, index=j, in_channels=in_ch, out_channels=out_ch,
          expand_ratio=stage.expand_ratio, kernel=stage.kernel,
          stride=stage.stride if j == 0 else 1, se_channels=se,
          drop_connect=drop_connect_rate * len(blocks) / total))
      in_ch = out_ch
  return blocks
