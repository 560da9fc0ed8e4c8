"""Which checkpoint tensor fills which parameter of our tree, per key layout.

Targets are '/'-joined paths of nnx.state(model) (e.g. 'stages_1_0/dw_conv/kernel');
each mapping also names the layout change from PyTorch's (see TRANSFORMS).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from efficientnet_jax.models import specs
from efficientnet_jax.weights.sources import LUKEMELAS_LAYOUT, TIMM_LAYOUT, TORCHVISION_LAYOUT


@dataclasses.dataclass(frozen=True)
class Transform:
  """PyTorch layout -> ours, and the PyTorch shape that yields a given target shape."""

  apply: Callable[[np.ndarray], np.ndarray]
  source_shape: Callable[[tuple[int, ...]], tuple[int, ...]]


TRANSFORMS: dict[str, Transform] = {
    # Full and depthwise k x k kernels: OIHW (C,1,k,k for depthwise) -> HWIO (k,k,1,C).
    "conv": Transform(lambda w: w.transpose(2, 3, 1, 0), lambda t: (t[3], t[2], t[0], t[1])),
    # 1x1 convolutions: (out, in, 1, 1) -> dense matrix (in, out).
    "pointwise": Transform(lambda w: w[:, :, 0, 0].T, lambda t: (t[1], t[0], 1, 1)),
    # nn.Linear: (out, in) -> (in, out).
    "dense": Transform(lambda w: w.T, lambda t: (t[1], t[0])),
    "vector": Transform(lambda w: w, lambda t: t),
}


@dataclasses.dataclass(frozen=True)
class TensorMapping:
  target: str
  source: str
  transform: str


# Our BatchNorm fields <- PyTorch's BatchNorm2d fields.
_BN_FIELDS = (("scale", "weight"), ("bias", "bias"), ("mean", "running_mean"), ("var", "running_var"))


class _MapBuilder:
  def __init__(self):
    self.mappings: list[TensorMapping] = []

  def add(self, target: str, source: str, transform: str) -> None:
    self.mappings.append(TensorMapping(target, source, transform))

  def bn(self, target: str, source: str) -> None:
    for ours, theirs in _BN_FIELDS:
      self.add(f"{target}/{ours}", f"{source}.{theirs}", "vector")

  def se(self, target: str, reduce: str, expand: str) -> None:
    for ours, theirs in (("reduce", reduce), ("expand", expand)):
      self.add(f"{target}/{ours}/kernel", f"{theirs}.weight", "pointwise")
      self.add(f"{target}/{ours}/bias", f"{theirs}.bias", "vector")


def _timm_map(blocks: list[specs.BlockSpec]) -> list[TensorMapping]:
  m = _MapBuilder()
  m.add("stem/conv/kernel", "conv_stem.weight", "conv")
  m.bn("stem/bn", "bn1")
  for b in blocks:
    ours, theirs = b.name, f"blocks.{b.stage}.{b.index}"
    if b.expand_ratio == 1:  # timm's DepthwiseSeparableConv: conv_dw, bn1, se, conv_pw, bn2.
      dw_bn, project, project_bn = "bn1", "conv_pw", "bn2"
    else:  # InvertedResidual: conv_pw, bn1, conv_dw, bn2, se, conv_pwl, bn3.
      m.add(f"{ours}/expand_conv/kernel", f"{theirs}.conv_pw.weight", "pointwise")
      m.bn(f"{ours}/expand_bn", f"{theirs}.bn1")
      dw_bn, project, project_bn = "bn2", "conv_pwl", "bn3"
    m.add(f"{ours}/dw_conv/kernel", f"{theirs}.conv_dw.weight", "conv")
    m.bn(f"{ours}/dw_bn", f"{theirs}.{dw_bn}")
    if b.se_channels:
      m.se(f"{ours}/se", f"{theirs}.se.conv_reduce", f"{theirs}.se.conv_expand")
    m.add(f"{ours}/project_conv/kernel", f"{theirs}.{project}.weight", "pointwise")
    m.bn(f"{ours}/project_bn", f"{theirs}.{project_bn}")
  m.add("head/conv/kernel", "conv_head.weight", "pointwise")
  m.bn("head/bn", "bn2")
  m.add("classifier/kernel", "classifier.weight", "dense")
  m.add("classifier/bias", "classifier.bias", "vector")
  return m.mappings


def _lukemelas_map(blocks: list[specs.BlockSpec]) -> list[TensorMapping]:
  m = _MapBuilder()
  m.add("stem/conv/kernel", "_conv_stem.weight", "conv")
  m.bn("stem/bn", "_bn0")
  for n, b in enumerate(blocks):
    ours, theirs = b.name, f"_blocks.{n}"
    if b.expand_ratio != 1:
      m.add(f"{ours}/expand_conv/kernel", f"{theirs}._expand_conv.weight", "pointwise")
      m.bn(f"{ours}/expand_bn", f"{theirs}._bn0")
    m.add(f"{ours}/dw_conv/kernel", f"{theirs}._depthwise_conv.weight", "conv")
    m.bn(f"{ours}/dw_bn", f"{theirs}._bn1")
    if b.se_channels:
      m.se(f"{ours}/se", f"{theirs}._se_reduce", f"{theirs}._se_expand")
    m.add(f"{ours}/project_conv/kernel", f"{theirs}._project_conv.weight", "pointwise")
    m.bn(f"{ours}/project_bn", f"{theirs}._bn2")
  m.add("head/conv/kernel", "_conv_head.weight", "pointwise")
  m.bn("head/bn", "_bn1")
  m.add("classifier/kernel", "_fc.weight", "dense")
  m.add("classifier/bias", "_fc.bias", "vector")
  return m.mappings


def _torchvision_map(blocks: list[specs.BlockSpec]) -> list[TensorMapping]:
  """torchvision.models.efficientnet (V1): nn.Sequential indices instead of names."""
  m = _MapBuilder()
  m.add("stem/conv/kernel", "features.0.0.weight", "conv")  # Conv2dNormActivation: 0 conv, 1 BN.
  m.bn("stem/bn", "features.0.1")
  for b in blocks:
    ours, theirs = b.name, f"features.{b.stage + 1}.{b.index}.block"
    # MBConv.block: [expand conv (only if expand_ratio != 1)], depthwise, SqueezeExcitation, project.
    dw = 0 if b.expand_ratio == 1 else 1
    se, project = dw + 1, dw + (2 if b.se_channels else 1)
    if dw:
      m.add(f"{ours}/expand_conv/kernel", f"{theirs}.0.0.weight", "pointwise")
      m.bn(f"{ours}/expand_bn", f"{theirs}.0.1")
    m.add(f"{ours}/dw_conv/kernel", f"{theirs}.{dw}.0.weight", "conv")
    m.bn(f"{ours}/dw_bn", f"{theirs}.{dw}.1")
    if b.se_channels:  # Every torchvision MBConv has one; a Lite arch will not match its keys.
      m.se(f"{ours}/se", f"{theirs}.{se}.fc1", f"{theirs}.{se}.fc2")
    m.add(f"{ours}/project_conv/kernel", f"{theirs}.{project}.0.weight", "pointwise")
    m.bn(f"{ours}/project_bn", f"{theirs}.{project}.1")
  head = f"features.{blocks[-1].stage + 2}"  # After the stem and every stage.
  m.add("head/conv/kernel", f"{head}.0.weight", "pointwise")
  m.bn("head/bn", f"{head}.1")
  m.add("classifier/kernel", "classifier.1.weight", "dense")  # classifier.0 is the Dropout.
  m.add("classifier/bias", "classifier.1.bias", "vector")
  return m.mappings


_LAYOUT_MAPS = {TIMM_LAYOUT: _timm_map, LUKEMELAS_LAYOUT: _lukemelas_map,
                TORCHVISION_LAYOUT: _torchvision_map}


def tensor_map(arch: str, layout: str) -> list[TensorMapping]:
  """Every tensor of `arch`'s parameter tree and the `layout` key that fills it."""
  blocks = specs.build_blocks(specs.get_variant(arch), drop_connect_rate=0.0)
  return _LAYOUT_MAPS[layout](blocks)


# Checkpoint tensors with no counterpart in our tree, and why they are not needed.
SKIPPED_SUFFIXES = {"num_batches_tracked": "BatchNorm update counter; unused in eval and by our momentum update"}
