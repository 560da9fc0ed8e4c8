"""Layers of the network: padding rules, the stem convolution, dense (1x1) layers,
BatchNorm with its activation, drop path. The depthwise convolution is in depthwise.py.

Kernels are stored float32 and cast to the compute dtype at use. Layouts: a full conv
kernel is HWIO (k, k, in, out); a pointwise (1x1) kernel is a dense matrix (in, out) and
runs as a matmul, which XLA compiles to faster code than a 1x1 convolution (measured on
XLA:CPU).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name
from efficientnet_jax.errors import ConfigError

PADDINGS = ("same", "symmetric")


def check_padding(padding: str) -> None:
  if padding not in PADDINGS:
    raise ConfigError(f"Unknown padding {padding!r} (config field model.padding); "
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


def spatial_padding(x: jax.Array, kernel: int, stride: int, padding: str
                    ) -> tuple[tuple[int, int], tuple[int, int]]:
  """((top, bottom), (left, right)) padding of NHWC `x`: a hashable tuple (custom VJPs need one)."""
  return tuple(pad_amounts(x.shape[axis], kernel, stride, padding) for axis in (1, 2))


def output_size(x: jax.Array, kernel: int, stride: int,
                pads: tuple[tuple[int, int], ...]) -> tuple[int, int]:
  """Output (height, width) of a strided k x k window over padded NHWC `x`."""
  return tuple((x.shape[axis] + sum(pads[axis - 1]) - kernel) // stride + 1 for axis in (1, 2))


def tap(xp: jax.Array, i: int, j: int, stride: int, out_h: int, out_w: int) -> jax.Array:
  """The strided window of padded `xp` that kernel tap (i, j) multiplies."""
  n, _, _, c = xp.shape
  return jax.lax.slice(xp, (0, i, j, 0),
                       (n, i + stride * (out_h - 1) + 1, j + stride * (out_w - 1) + 1, c),
                       (1, stride, stride, 1))


def he_normal(init: np.random.Generator, shape: tuple[int, ...], fan_out: int) -> jax.Array:
  """He-normal on fan-out, the initializer of the official TF EfficientNet.

  Initial values come from a NumPy generator: one XLA compilation per parameter shape
  (jax.random) made building B7 take tens of seconds on CPU.
  """
  return jnp.asarray(init.standard_normal(shape, np.float32) * np.float32(math.sqrt(2.0 / fan_out)))


class Conv(nnx.Module):
  """A full k x k convolution without bias (the stem, EfficientNetV2's Fused-MBConv).

  With `im2col` (chosen on CPU) it runs as one matmul over im2col patches (k*k*in values per
  output pixel): XLA:CPU's convolution of B0's stem (3 -> 32 channels, 3x3/2) took 2x as
  long forward and 1.5x as long with its backward (`benchmark profile`: the stem alone was
  20% of an eval step).
  """

  def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, *, padding: str,
               dtype: jnp.dtype, init: np.random.Generator, im2col: bool = False):
    shape = (kernel, kernel, in_ch, out_ch)
    self.kernel = nnx.Param(he_normal(init, shape, kernel * kernel * out_ch))
    self.stride = stride
    self.padding = padding
    self.dtype = dtype
    self.im2col = im2col

  def __call__(self, x: jax.Array, im2col: bool | None = None) -> jax.Array:
    """The convolution of NHWC `x`; `im2col` (default: self.im2col) picks the matmul form."""
    w = self.kernel[...].astype(self.dtype)
    k = w.shape[0]
    pads = spatial_padding(x, k, self.stride, self.padding)
    x = x.astype(self.dtype)
    if not (self.im2col if im2col is None else im2col):
      return jax.lax.conv_general_dilated(
          x, w, window_strides=(self.stride, self.stride), padding=pads,
          dimension_numbers=("NHWC", "HWIO", "NHWC"))
    out_h, out_w = output_size(x, k, self.stride, pads)
    xp = jnp.pad(x, [(0, 0), pads[0], pads[1], (0, 0)])
    # Channels ordered (tap row, tap column, input channel): the HWIO kernel's flattening.
    patches = jnp.concatenate([tap(xp, i, j, self.stride, out_h, out_w)
                               for i in range(k) for j in range(k)], axis=-1)
    y = jnp.dot(patches.reshape(-1, patches.shape[-1]), w.reshape(-1, w.shape[-1]))
    return y.reshape(x.shape[0], out_h, out_w, w.shape[-1])


class Dense(nnx.Module):
  """y = x @ kernel (+ bias) over the last axis: 1x1 convolutions and the classifier.

  A 1x1 convolution runs as this matmul (same parameters, kernel (in, out)).
  With `uniform_bound` the kernel is drawn from U(-bound, bound) (classifier inits; 0 gives
  zeros), and the bias too when `uniform_bias` (nn.Linear's init); otherwise the kernel is
  He-normal on fan-out (TF's conv init). Biases start at zero otherwise.
  """

  def __init__(self, in_ch: int, out_ch: int, *, use_bias: bool = False, dtype: jnp.dtype,
               init: np.random.Generator, uniform_bound: float | None = None,
               uniform_bias: bool = False):
    if uniform_bound is not None:
      kernel = jnp.asarray(init.uniform(-uniform_bound, uniform_bound, (in_ch, out_ch)).astype(np.float32))
    else:
      kernel = he_normal(init, (in_ch, out_ch), out_ch)
    self.kernel = nnx.Param(kernel)
    bias = np.zeros((out_ch,), np.float32)
    if uniform_bias and uniform_bound:
      bias = init.uniform(-uniform_bound, uniform_bound, (out_ch,)).astype(np.float32)
    self.bias = nnx.Param(jnp.asarray(bias)) if use_bias else None
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    # A 2-D matmul: with the spatial axes kept, the weight gradient contracts three axes, and
    # XLA:CPU then recomputed the incoming gradient's producer to write it transposed
    # (20% of a B0 training step); flattened, the dot reads it in place.
    kernel = self.kernel[...].astype(self.dtype)
    y = jnp.dot(x.reshape(-1, x.shape[-1]).astype(self.dtype), kernel)
    return self._add_bias(y.reshape(*x.shape[:-1], kernel.shape[-1]))

  def gated(self, x: jax.Array, gate: jax.Array, fold: bool) -> jax.Array:
    """self(x * gate) for NHWC `x` and a per-example, per-channel `gate` (N, 1, 1, C).

    With `fold` (chosen on CPU), where an example has many pixels (H*W >= 16 * outputs), the
    gate scales each example's copy of the kernel instead of x: one pass over x less, and
    XLA:CPU's batched matmul was faster than the multiply and matmul together (B0's early
    squeeze-excite blocks). Not measured on GPUs, which keep the multiply.
    """
    n, h, w, c = x.shape
    kernel = self.kernel[...].astype(self.dtype)
    gate = gate.astype(self.dtype)
    if not fold or h * w < 16 * kernel.shape[-1]:
      return self(x * gate)
    kernels = gate.reshape(n, c, 1) * kernel
    y = jnp.einsum("nmc,ncd->nmd", x.reshape(n, h * w, c).astype(self.dtype), kernels)
    return self._add_bias(y.reshape(n, h, w, kernel.shape[-1]))

  def _add_bias(self, y: jax.Array) -> jax.Array:
    return y if self.bias is None else y + self.bias[...].astype(self.dtype)


class BatchNorm(nnx.Module):
  """BatchNorm over N, H, W with float32 statistics; the output has the input's dtype.

  `use_running_average` is toggled by model.train() / model.eval(); `frozen` keeps the
  running statistics in use (and unchanged) in training mode as well.
  """

  def __init__(self, channels: int, *, momentum: float, epsilon: float, frozen: bool = False):
    self.scale = nnx.Param(jnp.ones((channels,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))
    self.mean = nnx.BatchStat(jnp.zeros((channels,), jnp.float32))
    self.var = nnx.BatchStat(jnp.ones((channels,), jnp.float32))
    self.momentum = momentum
    self.epsilon = epsilon
    self.frozen = frozen
    self.use_running_average = False

  def __call__(self, x: jax.Array,
               act: Callable[[jax.Array], jax.Array] | None = None) -> jax.Array:
    """Normalizes `x`, then applies `act` (if given) as part of the same layer."""
    act = act or (lambda y: y)
    if self.use_running_average or self.frozen:
      return act(_normalize(x, self.mean[...], self.var[...], self.scale[...], self.bias[...],
                            self.epsilon)).astype(x.dtype)
    y, mean, var = _train_batch_norm(x, self.scale[...], self.bias[...], self.epsilon, act)
    m = self.momentum
    # `.value =` replaces the array; `[...] =` makes flax probe the tracer's sharding,
    # which cost ~80% of the trace time of a B7 training step.
    self.mean.value = m * self.mean[...] + (1.0 - m) * mean
    self.var.value = m * self.var[...] + (1.0 - m) * var
    return y

  def inference_affine(self) -> tuple[jax.Array, jax.Array] | None:
    """(mul, add) when normalising with the running statistics (eval or frozen), else None."""
    if not (self.use_running_average or self.frozen):
      return None
    return _affine(self.mean[...], self.var[...], self.scale[...], self.bias[...], self.epsilon)


def _affine(mean: jax.Array, var: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float
            ) -> tuple[jax.Array, jax.Array]:
  """BatchNorm as y = x * mul + add per channel."""
  mul = scale * jax.lax.rsqrt(var + epsilon)
  return mul, bias - mean * mul


def _normalize(x: jax.Array, mean: jax.Array, var: jax.Array, scale: jax.Array, bias: jax.Array,
               epsilon: float) -> jax.Array:
  """The affine normalisation in float32 (fused: no float32 copy is stored)."""
  mul, add = _affine(mean, var, scale, bias, epsilon)
  return x.astype(jnp.float32) * mul + add


def _train_batch_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float,
                      act: Callable[[jax.Array], jax.Array]
                      ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """act(BatchNorm(x)) with batch statistics, and those statistics (mean, var).

  Rematerialised: the backward keeps only `x` and the per-channel statistics and recomputes
  the normalisation and activation (elementwise work) instead of storing their
  intermediates, which were three of every five activation-sized tensors kept for the
  backward pass.
  """

  def forward(x, scale, bias):
    axes = tuple(range(x.ndim - 1))
    xf = x.astype(jnp.float32)
    mean = checkpoint_name(jnp.mean(xf, axes), "batch_norm_statistics")
    var = jnp.mean(jnp.square(xf), axes) - jnp.square(mean)
    var = checkpoint_name(jnp.maximum(var, 0.0), "batch_norm_statistics")
    return act(_normalize(x, mean, var, scale, bias, epsilon)).astype(x.dtype), mean, var

  policy = jax.checkpoint_policies.save_only_these_names("batch_norm_statistics")
  return jax.checkpoint(forward, policy=policy)(x, scale, bias)


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
