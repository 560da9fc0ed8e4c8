"""Blocks of EfficientNet: stem, squeeze-excite, MBConv, Fused-MBConv (V2), head; BLOCKS maps a
stage's block type to its class."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from efficientnet_jax.models import layers, specs
from efficientnet_jax.models.depthwise import DepthwiseConv


@dataclasses.dataclass(frozen=True)
class LayerOptions:
  """What every block shares, resolved once per model (the backend included)."""

  padding: str
  depthwise: str  # A resolved implementation: conv, shifted or native.
  dtype: jnp.dtype
  bn_momentum: float
  bn_epsilon: float
  freeze_bn: bool
  activation: str
  cpu_forms: bool  # The forms measured fastest on XLA:CPU: im2col stem, gate folded into kernels.

  def bn(self, channels: int) -> layers.BatchNorm:
    return layers.BatchNorm(channels, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                            frozen=self.freeze_bn)

  def act(self, x: jax.Array) -> jax.Array:
    return layers.ACTIVATIONS[self.activation](x)


class ConvBnAct(nnx.Module):
  """k x k conv, BatchNorm, activation: the stem (3x3/2)."""

  def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, opts: LayerOptions,
               *, init: np.random.Generator):
    self.conv = layers.Conv(in_ch, out_ch, kernel, stride, padding=opts.padding, dtype=opts.dtype,
                            init=init, im2col=opts.cpu_forms)
    self.bn = opts.bn(out_ch)
    self.opts = opts

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.bn(self.conv(x), self.opts.act)


class PointwiseBnAct(nnx.Module):
  """1x1 conv, BatchNorm, activation: the head (-> 1280 * width)."""

  def __init__(self, in_ch: int, out_ch: int, opts: LayerOptions, *, init: np.random.Generator):
    self.conv = layers.Dense(in_ch, out_ch, dtype=opts.dtype, init=init)
    self.bn = opts.bn(out_ch)
    self.opts = opts

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.bn(self.conv(x), self.opts.act)


class SqueezeExcite(nnx.Module):
  """Global pool -> 1x1 reduce (+bias) -> swish -> 1x1 expand (+bias) -> sigmoid gate."""

  def __init__(self, channels: int, squeezed: int, opts: LayerOptions, *, init: np.random.Generator):
    self.reduce = layers.Dense(channels, squeezed, use_bias=True, dtype=opts.dtype, init=init)
    self.expand = layers.Dense(squeezed, channels, use_bias=True, dtype=opts.dtype, init=init)

  def __call__(self, x: jax.Array) -> jax.Array:
    """The gate (N, 1, 1, C) in x's dtype that multiplies `x`."""
    s = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(x.dtype)
    s = self.expand(jax.nn.silu(self.reduce(s)))
    # Computed in float32; applied in x's dtype, so that the backward's saved copy of x stays
    # in that dtype (a float32 product stored a float32 copy of every SE input).
    return jax.nn.sigmoid(s.astype(jnp.float32)).astype(x.dtype)


class _Residual(nnx.Module):
  """The identity skip of a block, with drop-connect: present only when the stride is 1 and
  the channels are unchanged."""

  def _init_skip(self, spec: specs.BlockSpec, rngs: nnx.Rngs) -> None:
    use_drop = spec.has_skip and spec.drop_connect > 0
    self.drop_path = layers.DropPath(spec.drop_connect, rngs=rngs) if use_drop else None
    self.has_skip = spec.has_skip

  def _add_skip(self, x: jax.Array, y: jax.Array) -> jax.Array:
    """The block's output: its branch `y`, plus the input `x` where there is a skip."""
    if not self.has_skip:
      return y
    if self.drop_path is not None:
      y = self.drop_path(y)
    return y + x


class MBConv(_Residual):
  """Mobile inverted bottleneck: [expand 1x1] -> depthwise kxk -> [SE] -> project 1x1 [+ skip].

  With expand ratio 1 (the first stage) there is no expansion conv. The identity skip,
  and with it drop-connect, exists only when stride is 1 and channels are unchanged.
  """

  def __init__(self, spec: specs.BlockSpec, opts: LayerOptions, *, init: np.random.Generator,
               rngs: nnx.Rngs):
    mid = spec.mid_channels
    if spec.expand_ratio != 1:
      self.expand_conv = layers.Dense(spec.in_channels, mid, dtype=opts.dtype, init=init)
      self.expand_bn = opts.bn(mid)
    else:
      self.expand_conv = self.expand_bn = None
    self.dw_conv = DepthwiseConv(mid, spec.kernel, spec.stride, padding=opts.padding,
                                 impl=opts.depthwise, dtype=opts.dtype, init=init)
    self.dw_bn = opts.bn(mid)
    self.se = SqueezeExcite(mid, spec.se_channels, opts, init=init) if spec.se_channels else None
    self.project_conv = layers.Dense(mid, spec.out_channels, dtype=opts.dtype, init=init)
    self.project_bn = opts.bn(spec.out_channels)
    self._init_skip(spec, rngs)
    self.opts = opts

  def __call__(self, x: jax.Array) -> jax.Array:
    y = x if self.expand_conv is None else self.expand_conv(x)
    # expand_bn + act -> depthwise conv -> dw_bn + act, in one call: with the native kernel
    # in evaluation both BatchNorms and activations run inside it.
    y = self.dw_conv.with_batch_norms(y, before=self.expand_bn, after=self.dw_bn,
                                      activation=self.opts.activation)
    if self.se is None:
      y = self.project_conv(y)
    else:
      y = self.project_conv.gated(y, self.se(y), fold=self.opts.cpu_forms)
    return self._add_skip(x, self.project_bn(y))


class FusedMBConv(_Residual):
  """Fused-MBConv (EfficientNetV2): fused kxk conv -> [project 1x1] [+ skip].

  The fused conv (`fused_conv`, `fused_bn`, activation) replaces MBConv's expansion 1x1 and
  depthwise kxk with one full kxk convolution carrying the stride: to in x expand channels,
  then `project_conv`, `project_bn` (no activation); with expand ratio 1 it goes straight
  to the output channels and there is no projection (as the official model). The official
  V2 tables have no squeeze-excite in these stages, and this block has none.
  """

  def __init__(self, spec: specs.BlockSpec, opts: LayerOptions, *, init: np.random.Generator,
               rngs: nnx.Rngs):
    if spec.se_channels:
      raise ValueError(f"{spec.name}: Fused-MBConv blocks have no squeeze-excite; give the stage "
                       "se_ratio 0 in models/specs.py.")
    fused = spec.mid_channels if spec.expand_ratio != 1 else spec.out_channels
    self.fused_conv = layers.Conv(spec.in_channels, fused, spec.kernel, spec.stride,
                                  padding=opts.padding, dtype=opts.dtype, init=init)
    self.conv_form = "auto"  # Or "im2col" / "xla" (benchmark blocks compares them).
    self.fused_bn = opts.bn(fused)
    if spec.expand_ratio != 1:
      self.project_conv = layers.Dense(fused, spec.out_channels, dtype=opts.dtype, init=init)
      self.project_bn = opts.bn(spec.out_channels)
    else:
      self.project_conv = self.project_bn = None
    self._init_skip(spec, rngs)
    self.opts = opts

  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.fused_bn(self.fused_conv(x, im2col=self.uses_im2col()), self.opts.act)
    if self.project_conv is not None:
      y = self.project_bn(self.project_conv(y))
    return self._add_skip(x, y)

  def uses_im2col(self) -> bool:
    """Whether the fused conv runs as an im2col matmul rather than XLA's convolution.

    'auto' picks the matmul on CPU in training for the expanding fused convs (stages 1-2),
    which trained 1.1-2.1x faster so; the non-expanding first stage trained 1.3-2.1x faster
    with XLA's convolution, and evaluation keeps it (4.5x faster in the first stage, within
    20% in the others). `python -m efficientnet_jax.benchmark blocks`, README "EfficientNetV2
    on CPU".
    """
    if self.conv_form == "auto":
      return (self.opts.cpu_forms and not self.fused_bn.use_running_average
              and self.project_conv is not None)
    return self.conv_form == "im2col"


# The block class of each block type of the stage tables (specs.BLOCK_TYPES).
BLOCKS: dict[str, type[nnx.Module]] = {specs.MBCONV: MBConv, specs.FUSED_MBCONV: FusedMBConv}
