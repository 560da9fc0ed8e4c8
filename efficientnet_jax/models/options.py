"""ModelOptions: every option of a model, in one place.

config.model holds exactly these fields (the seed comes from config.seed), and
create_model(arch, **options) takes them as keyword arguments.
"""

from __future__ import annotations

import dataclasses

from efficientnet_jax.models import depthwise, layers, specs
from efficientnet_jax.errors import ConfigError

DTYPES = ("float32", "bfloat16")
HEAD_INITS = ("tf", "torch", "zeros")


@dataclasses.dataclass(frozen=True)
class ModelOptions:
  """How to build an EfficientNet. Invalid values raise ConfigError naming the config field."""

  arch: str = "b0"  # b0…b7, lite0…lite4, v2_b0…v2_b3, v2_s, v2_m, v2_l, v2_xl (models/specs.py).
  num_classes: int = 1000
  in_channels: int = 3  # 3 = RGB, 1 = grayscale.
  # "same": TF's asymmetric padding (TF-ported weights); "symmetric": PyTorch's (timm-native,
  # torchvision weights).
  padding: str = "same"
  dropout_rate: float = -1.0  # Before the classifier; < 0: the architecture's default (0.2…0.5).
  drop_connect_rate: float = 0.2  # Stochastic depth, linear over blocks, on identity-skip blocks.
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-3
  dtype: str = "float32"  # Compute dtype: float32 or bfloat16 (params and BN statistics stay float32).
  # Depthwise convolution: auto (per backend), conv (XLA grouped), shifted, native (C++, CPU);
  # see models/depthwise.py.
  depthwise: str = "auto"
  freeze_bn: bool = False  # Keep BatchNorm statistics frozen while training.
  remat: bool = False  # Recompute each block in the backward pass: less memory (B5-B7), ~30% slower.
  # A fresh classifier's init: "tf" U(+-1/sqrt(classes)) as the official TF code; "torch"
  # kernel and bias U(+-1/sqrt(features)) as nn.Linear; "zeros" (big_vision's fine-tuning head).
  head_init: str = "tf"
  seed: int = 0  # Initial parameters and the dropout / drop-path streams.

  def __post_init__(self):
    specs.get_arch(self.arch)  # Raises for an unknown name.
    choices = (("padding", layers.PADDINGS), ("dtype", DTYPES), ("depthwise", depthwise.IMPLS),
               ("head_init", HEAD_INITS))
    for field, allowed in choices:
      if getattr(self, field) not in allowed:
        raise ConfigError(f"Unknown {field} {getattr(self, field)!r} (config field model.{field}); "
                         f"use one of {allowed}.")
    if self.in_channels not in (1, 3):
      raise ConfigError(f"model.in_channels must be 1 (grayscale) or 3 (RGB), got {self.in_channels}.")
    if self.num_classes < 1:
      raise ConfigError(f"model.num_classes={self.num_classes} must be >= 1.")
    for field in ("drop_connect_rate", "bn_momentum"):
      if not 0.0 <= getattr(self, field) < 1.0:
        raise ConfigError(f"model.{field}={getattr(self, field)} must be in [0, 1).")
    if self.dropout_rate >= 1.0:
      raise ConfigError(f"model.dropout_rate={self.dropout_rate} must be < 1 (< 0: the default).")
    if self.bn_epsilon <= 0:
      raise ConfigError(f"model.bn_epsilon={self.bn_epsilon} must be > 0.")

  @property
  def spec(self) -> specs.ArchSpec:
    return specs.get_arch(self.arch)

  @property
  def resolved_dropout_rate(self) -> float:
    """dropout_rate, or the architecture's default when it is negative."""
    return self.spec.dropout if self.dropout_rate < 0 else self.dropout_rate

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def fields(cls) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))
