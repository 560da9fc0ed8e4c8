"""Layers of the network: convolutions (TF 'same' or symmetric padding), BatchNorm, drop path.

Kernels are stored float32 and cast to the compute dtype at use. Layouts: a full conv
kernel is HWIO (k, k, in, out); a depthwise kernel is (k, k, 1, C); a pointwise (1x1)
kernel is a dense matrix (in, out) and runs as a matmul, which XLA compiles to faster
code than a 1x1 convolution (DESIGN.md, measured on XLA:CPU).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from efficientnet_jax import native

PADDINGS = ("same", "symmetric")
DEPTHWISE_IMPLS = ("auto", "conv", "shifted", "native")


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
  """'auto' picks the fastest depthwise implementation for the default backend.

  On one CPU device that is the native C++ kernel, or 'shifted' (with a warning saying why)
  where it cannot be built; on GPU/TPU XLA's grouped convolution. Several CPU devices get
  'shifted': XLA cannot split the kernel's custom call over a batch-sharded mesh, so each
  device would gather the whole batch and repeat the work (correct, but slow).
  """
  if impl not in DEPTHWISE_IMPLS:
    raise ValueError(
        f"Unknown depthwise implementation {impl!r} (config field model.depthwise); "
        f"use one of {DEPTHWISE_IMPLS}."
    )
  on_cpu = jax.default_backend() == "cpu"
  if impl == "auto":
    if not on_cpu:
      return "conv"
    if jax.device_count() > 1:
      return "shifted"
    reason = native.unavailable_reason()
    if reason is None:
      return "native"
    logging.warning("Native depthwise kernel unavailable, using 'shifted': %s", reason)
    return "shifted"
  if impl == "native":
    if not on_cpu:
      raise ValueError(f"model.depthwise='native' is a CPU kernel; the default backend is "
                       f"{jax.default_backend()!r}: use 'conv' or 'auto'.")
    reason = native.unavailable_reason()
    if reason is not None:
      raise native.NativeBuildError(reason)
  return impl


def _spatial_padding(x: jax.Array, kernel: int, stride: int, padding: str
                     ) -> tuple[tuple[int, int], tuple[int, int]]:
  return tuple(pad_amounts(x.shape[axis], kernel, stride, padding) for axis in (1, 2))


def he_normal(init: np.random.Generator, shape: tuple[int, ...], fan_out: int) -> jax.Array:
  """He-normal on fan-out, the initializer of the official TF EfficientNet.

  Initial values come from a NumPy generator: one XLA compilation per parameter shape
  (jax.random) made building B7 take tens of seconds on CPU.
  """
  return jnp.asarray(init.standard_normal(shape, np.float32) * np.float32(math.sqrt(2.0 / fan_out)))


class Conv(nnx.Module):
  """A full k x k convolution without bias (the stem).

  On CPU it runs as one matmul over im2col patches (k*k*in values per output pixel): XLA:CPU's
  convolution of B0's stem (3 -> 32 channels, 3x3/2) took 2x as long forward and 1.5x as
  long with its backward (`benchmark profile`: the stem alone was 20% of an eval step).
  """

  def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, *, padding: str,
               dtype: jnp.dtype, init: np.random.Generator):
    shape = (kernel, kernel, in_ch, out_ch)
    self.kernel = nnx.Param(he_normal(init, shape, kernel * kernel * out_ch))
    self.stride = stride
    self.padding = padding
    self.dtype = dtype
    self.im2col = jax.default_backend() == "cpu"

  def __call__(self, x: jax.Array) -> jax.Array:
    w = self.kernel[...].astype(self.dtype)
    k = w.shape[0]
    pads = _spatial_padding(x, k, self.stride, self.padding)
    x = x.astype(self.dtype)
    if not self.im2col:
      return jax.lax.conv_general_dilated(
          x, w, window_strides=(self.stride, self.stride), padding=pads,
          dimension_numbers=("NHWC", "HWIO", "NHWC"))
    out_h, out_w = _output_size(x, k, self.stride, pads)
    xp = jnp.pad(x, [(0, 0), pads[0], pads[1], (0, 0)])
    # Channels ordered (tap row, tap column, input channel): the HWIO kernel's flattening.
    patches = jnp.concatenate([_tap(xp, i, j, self.stride, out_h, out_w)
                               for i in range(k) for j in range(k)], axis=-1)
    y = jnp.dot(patches.reshape(-1, patches.shape[-1]), w.reshape(-1, w.shape[-1]))
    return y.reshape(x.shape[0], out_h, out_w, w.shape[-1])


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
    # A 2-D matmul: with the spatial axes kept, the weight gradient contracts three axes, and
    # XLA:CPU then recomputed the incoming gradient's producer to write it transposed
    # (20% of a B0 training step); flattened, the dot reads it in place.
    kernel = self.kernel[...].astype(self.dtype)
    y = jnp.dot(x.reshape(-1, x.shape[-1]).astype(self.dtype), kernel)
    return self._add_bias(y.reshape(*x.shape[:-1], kernel.shape[-1]))

  def gated(self, x: jax.Array, gate: jax.Array) -> jax.Array:
    """self(x * gate) for NHWC `x` and a per-example, per-channel `gate` (N, 1, 1, C).

    On CPU, where an example has many pixels (H*W >= 16 * outputs), the gate scales each
    example's copy of the kernel instead of x: one pass over x less, and XLA:CPU's batched
    matmul was faster than the multiply and matmul together (B0's early squeeze-excite
    blocks). Not measured on GPUs, which keep the multiply.
    """
    n, h, w, c = x.shape
    kernel = self.kernel[...].astype(self.dtype)
    gate = gate.astype(self.dtype)
    if jax.default_backend() != "cpu" or h * w < 16 * kernel.shape[-1]:
      return self(x * gate)
    kernels = gate.reshape(n, c, 1) * kernel
    y = jnp.einsum("nmc,ncd->nmd", x.reshape(n, h * w, c).astype(self.dtype), kernels)
    return self._add_bias(y.reshape(n, h, w, kernel.shape[-1]))

  def _add_bias(self, y: jax.Array) -> jax.Array:
    return y if self.bias is None else y + self.bias[...].astype(self.dtype)


class DepthwiseConv(nnx.Module):
  """A k x k depthwise convolution without bias.

  impl 'conv' is XLA's grouped convolution; 'shifted' sums k*k strided slices of the
  padded input times per-channel weights: the same arithmetic as elementwise work,
  which XLA:CPU runs several times faster forward and backward; 'native' is a C++ CPU
  kernel (efficientnet_jax/native) that also computes both gradients in one pass.
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
  """Depthwise convolution of NHWC `x` with a (k, k, 1, C) kernel; impl 'conv', 'shifted'
  or 'native' (resolved, not 'auto')."""
  pads = _spatial_padding(x, w.shape[0], stride, padding)
  if impl == "conv":
    return jax.lax.conv_general_dilated(
        x, w, window_strides=(stride, stride), padding=pads,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1],
    )
  if impl == "native":
    return _native_depthwise(x, w, stride, pads)
  return _shifted_depthwise(x, w, stride, pads)


def _output_size(x: jax.Array, kernel: int, stride: int,
                 pads: tuple[tuple[int, int], ...]) -> tuple[int, int]:
  return tuple((x.shape[axis] + sum(pads[axis - 1]) - kernel) // stride + 1 for axis in (1, 2))


def _accumulator(dtype: jnp.dtype) -> jnp.dtype:
  """Sums of taps run in float32 under bfloat16/float16 (the cast fuses; no copy is stored)."""
  return jnp.promote_types(dtype, jnp.float32)


def _tap(xp: jax.Array, i: int, j: int, stride: int, out_h: int, out_w: int) -> jax.Array:
  """The strided window of padded `xp` that kernel tap (i, j) multiplies."""
  n, _, _, c = xp.shape
  return jax.lax.slice(xp, (0, i, j, 0),
                       (n, i + stride * (out_h - 1) + 1, j + stride * (out_w - 1) + 1, c),
                       (1, stride, stride, 1))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _shifted_depthwise(x: jax.Array, w: jax.Array, stride: int,
                       pads: tuple[tuple[int, int], ...]) -> jax.Array:
  """Sum over the k*k taps of (strided window of padded x) * w[tap].

  The backward is written by hand: differentiating the sum makes XLA store every tap's
  window for the weight gradient (k*k copies of the activation per layer), which was most
  of the CPU step time and memory. Here only `x` is kept; the backward scatters the output
  gradient through the same taps (dx) and reduces window * gradient per tap (dw).
  """
  k = w.shape[0]
  out_h, out_w = _output_size(x, k, stride, pads)
  xp = jnp.pad(x, [(0, 0), pads[0], pads[1], (0, 0)])
  acc = _accumulator(x.dtype)
  out = sum(_tap(xp, i, j, stride, out_h, out_w).astype(acc) * w[i, j, 0].astype(acc)
            for i in range(k) for j in range(k))
  return out.astype(x.dtype)


def _shifted_depthwise_fwd(x, w, stride, pads):
  return _shifted_depthwise(x, w, stride, pads), (x, w)


def _shifted_depthwise_bwd(stride, pads, residuals, g):
  x, w = residuals
  k = w.shape[0]
  _, h, wd, _ = x.shape
  out_h, out_w = g.shape[1], g.shape[2]
  acc = _accumulator(x.dtype)
  g = g.astype(acc)
  padded_h, padded_w = h + sum(pads[0]), wd + sum(pads[1])
  zero = jnp.zeros((), acc)
  dx = 0
  for i in range(k):
    for j in range(k):
      # Output (oh, ow) read padded input (i + s*oh, j + s*ow): place g there (interior
      # padding s-1), then crop the padding away (negative edge padding).
      placement = [(0, 0, 0),
                   (i - pads[0][0], padded_h - i - stride * (out_h - 1) - 1 - pads[0][1], stride - 1),
                   (j - pads[1][0], padded_w - j - stride * (out_w - 1) - 1 - pads[1][1], stride - 1),
                   (0, 0, 0)]
      dx = dx + jax.lax.pad(g, zero, placement) * w[i, j, 0].astype(acc)
  # The weight gradient reads the forward's windows of x again, one window at a time:
  # adding `0 * (a value computed just before)` orders the windows and keeps XLA from
  # merging them with the forward's identical ones, which it would otherwise keep alive,
  # all k*k of them, from the forward pass to here (most of the step's memory). A
  # non-finite gradient makes dw non-finite either way.
  x = x.astype(acc)
  previous = jax.lax.slice(g, (0, 0, 0, 0), (1, 1, 1, 1)).reshape(())
  dw = []
  for i in range(k):
    for j in range(k):
      xp = jnp.pad(x + previous * 0, [(0, 0), pads[0], pads[1], (0, 0)])
      dw.append(jnp.sum(_tap(xp, i, j, stride, out_h, out_w) * g, axis=(0, 1, 2)))
      previous = dw[-1][0]
  return dx.astype(residuals[0].dtype), jnp.stack(dw).reshape(w.shape).astype(w.dtype)


_shifted_depthwise.defvjp(_shifted_depthwise_fwd, _shifted_depthwise_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _native_depthwise(x: jax.Array, w: jax.Array, stride: int,
                      pads: tuple[tuple[int, int], ...]) -> jax.Array:
  """The C++ kernel (efficientnet_jax/native): one pass over x forward, one call backward."""
  k, c = w.shape[0], w.shape[-1]
  return native.depthwise_forward(x, w.reshape(k, k, c), stride, pads,
                                  _output_size(x, k, stride, pads))


def _native_depthwise_fwd(x, w, stride, pads):
  return _native_depthwise(x, w, stride, pads), (x, w)


def _native_depthwise_bwd(stride, pads, residuals, g):
  x, w = residuals
  k, c = w.shape[0], w.shape[-1]
  dx, dw = native.depthwise_backward(x, w.reshape(k, k, c), g.astype(x.dtype), stride, pads)
  return dx, dw.reshape(w.shape)


_native_depthwise.defvjp(_native_depthwise_fwd, _native_depthwise_bwd)


def depthwise_bn_act(conv: DepthwiseConv, bn: BatchNorm, activation: str, x: jax.Array,
                     input_bn: BatchNorm | None = None) -> jax.Array:
  """activation(bn(conv(x))); with `input_bn`, of x = activation(input_bn(x)) first.

  With the native kernel and BatchNorm on its running statistics (evaluation, or frozen), the
  kernel applies the normalisations and activations to the values it reads and writes:
  no passes over x or the output of their own.
  """
  act = ACTIVATIONS[activation]
  affine = bn.inference_affine()
  fused = conv.impl == "native" and affine is not None
  in_affine = input_bn.inference_affine() if fused and input_bn is not None else None
  if input_bn is not None and in_affine is None:
    x = input_bn(x, act)
  if not fused:
    return bn(conv(x), act)
  w = conv.kernel[...].astype(conv.dtype)
  pads = _spatial_padding(x, w.shape[0], conv.stride, conv.padding)
  return _native_depthwise_affine_act(x.astype(conv.dtype), w, *affine, in_affine, conv.stride,
                                      pads, activation)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _native_depthwise_affine_act(x: jax.Array, w: jax.Array, mul: jax.Array, add: jax.Array,
                                 in_affine: tuple[jax.Array, jax.Array] | None, stride: int,
                                 pads: tuple[tuple[int, int], ...], activation: str) -> jax.Array:
  """activation(conv(x') * mul + add), x' = x or activation(x * in_mul + in_add) with
  `in_affine` = (in_mul, in_add)."""
  k, c = w.shape[0], w.shape[-1]
  in_mul, in_add = in_affine or (None, None)
  return native.depthwise_forward(x, w.reshape(k, k, c), stride, pads,
                                  _output_size(x, k, stride, pads), mul, add, activation,
                                  in_mul, in_add, "none" if in_affine is None else activation)


def _unfused_affine_act(x, w, mul, add, in_affine, stride, pads, activation):
  if in_affine is not None:
    in_mul, in_add = in_affine
    x = ACTIVATIONS[activation](x.astype(jnp.float32) * in_mul + in_add).astype(x.dtype)
  y = _native_depthwise(x, w, stride, pads).astype(jnp.float32) * mul + add
  return ACTIVATIONS[activation](y).astype(x.dtype)


def _native_depthwise_affine_act_fwd(x, w, mul, add, in_affine, stride, pads, activation):
  y = _native_depthwise_affine_act(x, w, mul, add, in_affine, stride, pads, activation)
  return y, (x, w, mul, add, in_affine)


def _native_depthwise_affine_act_bwd(stride, pads, activation, residuals, g):
  """Gradients (rare: saliency maps, frozen BatchNorm) through the unfused ops, recomputed."""
  _, vjp = jax.vjp(lambda *a: _unfused_affine_act(*a, stride, pads, activation), *residuals)
  return vjp(g)


_native_depthwise_affine_act.defvjp(_native_depthwise_affine_act_fwd,
                                    _native_depthwise_affine_act_bwd)


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
