"""Checkpoint sources: key layout, padding and BatchNorm epsilon of each, and detection.

The key layout says how to map tensors; it does not say how the network was run. timm's
`tf_efficientnet_*` (ports of the official TF weights: TF 'same' padding, BN eps 1e-3) and
its native `efficientnet_*` (symmetric padding, PyTorch's BN eps 1e-5) share one layout,
so those two are told apart by name. torchvision's `efficientnet_b0…b7` (V1) have their
own layout; its b5-b7 weights are lukemelas' TF ports, built with TF's BN eps 1e-3, and
still run with symmetric padding (torchvision's architecture fixes it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from efficientnet_jax.weights.errors import WeightsError

TIMM_LAYOUT = "timm"  # conv_stem, bn1, blocks.{stage}.{index}.conv_dw, …, classifier
LUKEMELAS_LAYOUT = "lukemelas"  # _conv_stem, _bn0, _blocks.{n}._depthwise_conv, …, _fc
TORCHVISION_LAYOUT = "torchvision"  # features.0.0, features.{stage+1}.{index}.block.{k}, …

# The stem convolution's key in each layout: what detection looks for.
_STEM_KEYS = {TIMM_LAYOUT: "conv_stem.weight", LUKEMELAS_LAYOUT: "_conv_stem.weight",
             TORCHVISION_LAYOUT: "features.0.0.weight"}


@dataclasses.dataclass(frozen=True)
class Source:
  """How a family of checkpoints was built."""

  name: str
  layout: str
  padding: str
  bn_epsilon: float
  description: str
  # Architectures built with another BN epsilon than `bn_epsilon`.
  bn_epsilon_by_arch: Mapping[str, float] = dataclasses.field(default_factory=dict, hash=False)

  def epsilon(self, arch: str) -> float:
    """The BatchNorm epsilon that `arch`'s checkpoints from this source were built with."""
    return self.bn_epsilon_by_arch.get(arch, self.bn_epsilon)


SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source("timm-tf", TIMM_LAYOUT, "same", 1e-3,
               "timm tf_efficientnet_* / tf_efficientnet_lite* (ports of the official TF weights)"),
        Source("timm", TIMM_LAYOUT, "symmetric", 1e-5,
               "timm native efficientnet_* / efficientnet_lite* (trained in PyTorch)"),
        Source("lukemelas", LUKEMELAS_LAYOUT, "same", 1e-3,
               "lukemelas efficientnet-pytorch and efficientnet-lite-pytorch (TF ports)"),
        Source("torchvision", TORCHVISION_LAYOUT, "symmetric", 1e-5,
               "torchvision efficientnet_b0…b7 (V1; b5-b7 with BN eps 1e-3)",
               bn_epsilon_by_arch={"b5": 1e-3, "b6": 1e-3, "b7": 1e-3}),
    )
}
SOURCE_NAMES = ("auto",) + tuple(SOURCES)


class SourceError(WeightsError, ValueError):
  """The checkpoint's source cannot be determined or is not supported."""


def detect_layout(keys: Iterable[str]) -> str:
  """The key layout of a state dict, from its stem convolution's key."""
  keys = set(keys)
  for layout, stem in _STEM_KEYS.items():
    if stem in keys:
      return layout
  sample = ", ".join(sorted(keys)[:6])
  expected = " or ".join(f"{stem!r} ({layout})" for layout, stem in _STEM_KEYS.items())
  raise SourceError(
      f"Unrecognised checkpoint layout: no {expected} tensor. First keys: {sample}. "
      "Supported sources: "
      + "; ".join(f"{s.name}: {s.description}" for s in SOURCES.values()))


def resolve_source(source: str, keys: Iterable[str], checkpoint_name: str) -> Source:
  """The source named by `source`, or for 'auto' the one the keys and file name imply."""
  if source != "auto":
    if source not in SOURCES:
      raise SourceError(f"Unknown source {source!r} (flag --source); use one of {SOURCE_NAMES}.")
    return SOURCES[source]
  layout = detect_layout(keys)
  if layout == LUKEMELAS_LAYOUT:
    return SOURCES["lukemelas"]
  if layout == TORCHVISION_LAYOUT:
    return SOURCES["torchvision"]
  name = checkpoint_name.lower()
  if "tf_efficientnet" in name:
    return SOURCES["timm-tf"]
  if "efficientnet_" in name:
    return SOURCES["timm"]
  raise SourceError(
      f"{checkpoint_name}: the keys are timm's layout, which both tf_efficientnet_* (TF 'same' "
      "padding, BN eps 1e-3) and native efficientnet_* (symmetric padding, BN eps 1e-5) use, "
      "and the file name does not say which. Pass --source=timm-tf or --source=timm.")
