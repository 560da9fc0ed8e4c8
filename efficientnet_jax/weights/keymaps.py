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


# Our layers of a block ('<layer>_conv', '<layer>_bn') and the layout change of each conv.
_LAYER_TRANSFORMS = {"expand": "pointwise", "dw": "conv", "fused": "conv", "project": "pointwise"}


@dataclasses.dataclass(frozen=True)
class _BlockKeys:
  """Checkpoint prefixes of one block's layers: our layer name (see _LAYER_TRANSFORMS) ->
  (its conv, its BatchNorm), the conv weight being '<conv>.weight'; and the squeeze-excite
  (reduce, expand) 1x1 convs."""

  convs: dict[str, tuple[str, str]]
  se: tuple[str, str] | None = None


@dataclasses.dataclass(frozen=True)
class _LayoutKeys:
  """Checkpoint prefixes of a whole network in one key layout."""

  stem: tuple[str, str]
  blocks: list[_BlockKeys]
  head: tuple[str, str]
  classifier: str


def _timm_keys(blocks: list[specs.BlockSpec]) -> _LayoutKeys:
  keys = []
  for b in blocks:
    p = f"blocks.{b.stage}.{b.index}"
    se = (f"{p}.se.conv_reduce", f"{p}.se.conv_expand") if b.se_channels else None
    if b.block == specs.FUSED_MBCONV and b.expand_ratio == 1:  # ConvBnAct: conv, bn1.
      convs = {"fused": (f"{p}.conv", f"{p}.bn1")}
    elif b.block == specs.FUSED_MBCONV:  # EdgeResidual: conv_exp, bn1, conv_pwl, bn2.
      convs = {"fused": (f"{p}.conv_exp", f"{p}.bn1"), "project": (f"{p}.conv_pwl", f"{p}.bn2")}
    elif b.expand_ratio == 1:  # DepthwiseSeparableConv: conv_dw, bn1, se, conv_pw, bn2.
      convs = {"dw": (f"{p}.conv_dw", f"{p}.bn1"), "project": (f"{p}.conv_pw", f"{p}.bn2")}
    else:  # InvertedResidual: conv_pw, bn1, conv_dw, bn2, se, conv_pwl, bn3.
      convs = {"expand": (f"{p}.conv_pw", f"{p}.bn1"), "dw": (f"{p}.conv_dw", f"{p}.bn2"),
               "project": (f"{p}.conv_pwl", f"{p}.bn3")}
    keys.append(_BlockKeys(convs, se))
  return _LayoutKeys(("conv_stem", "bn1"), keys, ("conv_head", "bn2"), "classifier")


def _lukemelas_keys(blocks: list[specs.BlockSpec]) -> _LayoutKeys:
  keys = []
  for n, b in enumerate(blocks):
    p = f"_blocks.{n}"
    convs = {"expand": (f"{p}._expand_conv", f"{p}._bn0")} if b.expand_ratio != 1 else {}
    convs |= {"dw": (f"{p}._depthwise_conv", f"{p}._bn1"), "project": (f"{p}._project_conv", f"{p}._bn2")}
    keys.append(_BlockKeys(convs, (f"{p}._se_reduce", f"{p}._se_expand") if b.se_channels else None))
  return _LayoutKeys(("_conv_stem", "_bn0"), keys, ("_conv_head", "_bn1"), "_fc")


def _torchvision_keys(blocks: list[specs.BlockSpec]) -> _LayoutKeys:
  """torchvision.models.efficientnet (V1): nn.Sequential indices instead of names.

  Conv2dNormActivation holds 0 conv, 1 BN; MBConv.block holds [expand conv (only if
  expand_ratio != 1)], depthwise, SqueezeExcitation, project.
  """
  keys = []
  for b in blocks:
    p = f"features.{b.stage + 1}.{b.index}.block"
    dw = 0 if b.expand_ratio == 1 else 1
    project = dw + (2 if b.se_channels else 1)
    convs = {"expand": (f"{p}.0.0", f"{p}.0.1")} if dw else {}
    convs |= {"dw": (f"{p}.{dw}.0", f"{p}.{dw}.1"), "project": (f"{p}.{project}.0", f"{p}.{project}.1")}
    # Every torchvision MBConv has an SE; a Lite arch will not match its keys.
    se = (f"{p}.{dw + 1}.fc1", f"{p}.{dw + 1}.fc2") if b.se_channels else None
    keys.append(_BlockKeys(convs, se))
  head = f"features.{blocks[-1].stage + 2}"  # After the stem and every stage.
  return _LayoutKeys(("features.0.0", "features.0.1"), keys, (f"{head}.0", f"{head}.1"),
                     "classifier.1")  # classifier.0 is the Dropout.


def _mappings(blocks: list[specs.BlockSpec], keys: _LayoutKeys) -> list[TensorMapping]:
  """Our parameter paths paired with one layout's keys."""
  out: list[TensorMapping] = []

  def conv_bn(conv: str, bn: str, pair: tuple[str, str], transform: str) -> None:
    out.append(TensorMapping(f"{conv}/kernel", f"{pair[0]}.weight", transform))
    out.extend(TensorMapping(f"{bn}/{ours}", f"{pair[1]}.{theirs}", "vector")
               for ours, theirs in _BN_FIELDS)

  conv_bn("stem/conv", "stem/bn", keys.stem, "conv")
  for b, k in zip(blocks, keys.blocks):
    for layer, pair in k.convs.items():
      conv_bn(f"{b.name}/{layer}_conv", f"{b.name}/{layer}_bn", pair, _LAYER_TRANSFORMS[layer])
    if k.se is not None:
      for ours, theirs in zip(("reduce", "expand"), k.se):
        target = f"{b.name}/se/{ours}"
        out.append(TensorMapping(f"{target}/kernel", f"{theirs}.weight", "pointwise"))
        out.append(TensorMapping(f"{target}/bias", f"{theirs}.bias", "vector"))
  conv_bn("head/conv", "head/bn", keys.head, "pointwise")
  out.append(TensorMapping("classifier/kernel", f"{keys.classifier}.weight", "dense"))
  out.append(TensorMapping("classifier/bias", f"{keys.classifier}.bias", "vector"))
  return out


_LAYOUT_KEYS = {TIMM_LAYOUT: _timm_keys, LUKEMELAS_LAYOUT: _lukemelas_keys,
                TORCHVISION_LAYOUT: _torchvision_keys}
# The block types each layout has keys for: only timm's covers EfficientNetV2's Fused-MBConv.
_LAYOUT_BLOCK_TYPES = {TIMM_LAYOUT: set(specs.BLOCK_TYPES), LUKEMELAS_LAYOUT: {specs.MBCONV},
                       TORCHVISION_LAYOUT: {specs.MBCONV}}


def layout_archs(layout: str) -> list[str]:
  """The architectures whose checkpoints `layout` can hold."""
  return [arch for arch, spec in specs.ARCHS.items()
          if {s.block for s in spec.family.stages} <= _LAYOUT_BLOCK_TYPES[layout]]


def tensor_map(arch: str, layout: str) -> list[TensorMapping]:
  """Every tensor of `arch`'s parameter tree and the `layout` key that fills it."""
  if arch not in layout_archs(layout):
    raise ValueError(f"The {layout!r} checkpoint layout has no {arch} (its archs: "
                     f"{', '.join(layout_archs(layout))}); EfficientNetV2 weights are timm's "
                     "tf_efficientnetv2_*.")
  blocks = specs.build_blocks(specs.get_arch(arch), drop_connect_rate=0.0)
  return _mappings(blocks, _LAYOUT_KEYS[layout](blocks))


# Checkpoint tensors with no counterpart in our tree, and why they are not needed.
SKIPPED_SUFFIXES = {"num_batches_tracked": "BatchNorm update counter; unused in eval and by our momentum update"}
