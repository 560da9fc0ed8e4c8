"""Layers of the network: convolutions (TF 'same' or symmetric padding), BatchNorm, drop path.

Kernels are stored float32 and cast to the compute dtype at use. Layouts: a full conv
kernel is HWIO (k, k, in, out); a depthwise kernel is (k, k, 1, C); a pointwise (1x1)
kernel is a dense matrix (in, out) and runs as a matmul, which XLA compiles to faster
code than a 1x1 convolution (DESIGN.md, measured on XLA:CPU).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

PADDINGS = ("same", "symmetric")
DEPTHWISE_IMPLS = ("auto", "conv", "shifted")


def check_padding(padding: str) -> None:
  if padding not in PADDINGS:
    raise ValueError(f"Unknown padding {padding!r} (config field model.padding); "
                     f"use one of {PADDINGS}.")


def pad_amounts(size: int, kernel: int, stride: int, padding: str) -> tuple[int, int]:
  """(before, after) padding of one spatial axis.

  'same' is TF's: output ceil(size / stride), the odd pixel padded after (bottom/right).
  'symmetric' is PyTorch's padding=kernel // 2 on both sides.
  """
  check_padding(padding)
  if padding == "same":
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2
  return kernel // 2, kernel // 2


def resolve_depthwise(impl: str) -> str:
  """'auto' picks the faster depthwise implementation for the default backend."""
  if impl not in DEPTHWISE_IMPLS:
    raise ValueError(
        f"Unknown depthwise implementation {impl!r} (config field model.depthwise); "
        f"use one of {DEPTHWISE_IMPLS}."
    )
  if impl == "auto":
    return "shifted" if jax.default_backend() == "cpu" else "conv"
  return impl


def _spatial_padding(x: jax.Array, kernel: int, stride: int, padding: str) -> list[tuple[int, int]]:
  return [pad_amounts(x.shape[axis], kernel, stride, padding) for axis in (1, 2)]


def he_normal(init: np.random.Generator, shape: tuple[int, ...], fan_out: int) -> jax.Array:
  """He-normal on fan-out, the initializer of the official TF EfficientNet.

  Initial values come from a NumPy generator: one XLA compilation per parameter shape
  (jax.random) made building B7 take tens of seconds on CPU.
  """
  return jnp.asarray(init.standard_normal(shape, np.float32) * np.float32(math.sqrt(2.0 / fan_out)))


class Conv(nnx.Module):
  """A full k x k convolution without bias (the stem)."""

  def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, *, padding: str,
               dtype: jnp.dtype, init: np.random.Generator):
    shape = (kernel, kernel, in_ch, out_ch)
    self.kernel = nnx.Param(he_normal(init, shape, kernel * kernel * out_ch))
    self.stride = stride
    self.padding = padding
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel.shape[0]
    return jax.lax.conv_general_dilated(
        x.astype(self.dtype),
        self.kernel[...].astype(self.dtype),
        window_strides=(self.stride, self.stride),
        padding=_spatial_padding(x, k, self.stride, self.padding),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


class Dense(nnx.Module):
  """y = x @ kernel (+ bias) over the last axis: 1x1 convolutions and the classifier.

  A 1x1 convolution runs as this matmul (same parameters, kernel (in, out)).
  With `uniform_bound` the kernel is drawn from U(-bound, bound) (classifier inits; 0 gives
  zeros); otherwise it is He-normal on fan-out (TF's conv init).
  """

  def __init__(self, in_ch: int, out_ch: int, *, use_bias: bool = False, dtype: jnp.dtype,
               init: np.random.Generator, uniform_bound: float | None = None):
    if uniform_bound is not None:
      kernel = jnp.asarray(init.uniform(-uniform_bound, uniform_bound, (in_ch, out_ch)).astype(np.float32))
    else:
      kernel = he_normal(init, (in_ch, out_ch), out_ch)
    self.kernel = nnx.Param(kernel)
    self.bias = nnx.Param(jnp.zeros((out_ch,), jnp.float32)) if use_bias else None
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class DepthwiseConv(nnx.Module):
  """A k x k depthwise convolution without bias.

  impl 'conv' is XLA's grouped convolution; 'shifted' sums k*k strided slices of the
  padded input times per-channel weights: the same arithmetic as elementwise work,
  which XLA:CPU runs several times faster forward and backward.
  """

  def __init__(self, channels: int, kernel: int, stride: int, *, padding: str, impl: str,
               dtype: jnp.dtype, init: np.random.Generator):
    self.kernel = nnx.Param(he_normal(init, (kernel, kernel, 1, channels), kernel * kernel))
    self.stride = stride
    self.padding = padding
    self.impl = resolve_depthwise(impl)
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    return depthwise_conv(x.astype(self.dtype), self.kernel[...].astype(self.dtype), self.stride,
                          self.padding, self.impl)


def depthwise_conv(x: jax.Array, w: jax.Array, stride: int, padding: str, impl: str) -> jax.Array:
  """Depthwise convolution of NHWC `x` with a (k, k, 1, C) kernel; impl 'conv' or 'shifted'."""
  k, s = w.shape[0], stride
  pads = _spatial_padding(x, k, s, padding)
  if impl == "conv":
    return jax.lax.conv_general_dilated(
        x, w, window_strides=(s, s), padding=pads,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1],
    )
  n, h, wd, c = x.shape
  out_h = (h + sum(pads[0]) - k) // s + 1
  out_w = (wd + sum(pads[1]) - k) // s + 1
  xp = jnp.pad(x, [(0, 0), pads[0], pads[1], (0, 0)])
  out = None
  for i in range(k):
    for j in range(k):
      tap = jax.lax.slice(
          xp, (0, i, j, 0), (n, i + s * (out_h - 1) + 1, j + s * (out_w - 1) + 1, c), (1, s, s, 1)
      ) * w[i, j, 0]
      out = tap if out is None else out + tap
  return out


class BatchNorm(nnx.Module):
  """BatchNorm over N, H, W with float32 statistics, whatever the compute dtype.

  `use_running_average` is toggled by model.train() / model.eval(); `frozen` keeps the
  running statistics in use (and unchanged) in training mode as well.
  """

  def __init__(self, channels: int, *, momentum: float, epsilon: float, dtype: jnp.dtype,
               frozen: bool = False):
    self.scale = nnx.Param(jnp.ones((channels,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))
    self.mean = nnx.BatchStat(jnp.zeros((channels,), jnp.float32))
    self.var = nnx.BatchStat(jnp.ones((channels,), jnp.float32))
    self.momentum = momentum
    self.epsilon = epsilon
    self.dtype = dtype
    self.frozen = frozen
    self.use_running_average = False

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.use_running_average or self.frozen:
      mean, var = self.mean[...], self.var[...]
    else:
      axes = tuple(range(x.ndim - 1))
      xf = x.astype(jnp.float32)
      mean = jnp.mean(xf, axes)
      var = jnp.maximum(jnp.mean(jnp.square(xf), axes) - jnp.square(mean), 0.0)
      m = self.momentum
      # `.value =` replaces the array; `[...] =` makes flax probe the tracer's sharding,
      # which cost ~80% of the trace time of a B7 training step.
      self.mean.value = m * self.mean[...] + (1.0 - m) * mean
      self.var.value = m * self.var[...] + (1.0 - m) * var
    mul = self.scale[...] * jax.lax.rsqrt(var + self.epsilon)
    add = self.bias[...] - mean * mul
    return x * mul.astype(x.dtype) + add.astype(x.dtype)


class DropPath(nnx.Module):
  """Stochastic depth: drops a block's residual branch per example in training."""

  def __init__(self, rate: float, *, rngs: nnx.Rngs):
    self.rate = rate
    self.rngs = rngs["dropout"].fork()
    self.deterministic = False

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.deterministic or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(self.rngs(), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype))


ACTIVATIONS = {"swish": jax.nn.silu, "relu6": jax.nn.relu6}
