"""The depthwise k x k convolution of MBConv blocks, in three implementations, and its fusion
with the BatchNorms around it.

  conv     XLA's grouped convolution (the GPU default: cuDNN's depthwise kernels);
  shifted  the sum of k*k strided windows times per-channel weights, with a hand-written
           backward (pure JAX, fast on XLA:CPU, any device count);
  native   a C++ XLA:CPU kernel (efficientnet_jax/native) with a one-call backward, which in
           evaluation also applies the BatchNorm + activation before and after it.

`resolve` picks one for a backend, once per model; `DepthwiseConv` is the layer.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from efficientnet_jax import native
from efficientnet_jax.errors import ConfigError
from efficientnet_jax.models.layers import (ACTIVATIONS, BatchNorm, he_normal, output_size,
                                            spatial_padding, tap)

IMPLS = ("auto", "conv", "shifted", "native")


def resolve(impl: str, backend: str, device_count: int) -> str:
  """The implementation `impl` means on `backend` ('cpu', 'gpu', ...) with `device_count` devices.

  'auto' is the native kernel on one CPU device, or 'shifted' (with a warning saying why)
  where it cannot be built; XLA's grouped convolution on GPU/TPU. Several CPU devices get
  'shifted': XLA cannot split the kernel's custom call over a batch-sharded mesh, so each
  device would gather the whole batch and repeat the work (correct, but slow).
  """
  if impl not in IMPLS:
    raise ConfigError(f"Unknown depthwise implementation {impl!r} (config field model.depthwise); "
                     f"use one of {IMPLS}.")
  on_cpu = backend == "cpu"
  if impl == "auto":
    if not on_cpu:
      return "conv"
    if device_count > 1:
      return "shifted"
    reason = native.unavailable_reason()
    if reason is None:
      return "native"
    logging.warning("Native depthwise kernel unavailable, using 'shifted': %s", reason)
    return "shifted"
  if impl == "native":
    if not on_cpu:
      raise ConfigError(f"model.depthwise='native' is a CPU kernel; the backend is {backend!r}: "
                       "use 'conv' or 'auto'.")
    reason = native.unavailable_reason()
    if reason is not None:
      raise native.NativeBuildError(reason)
  return impl


class DepthwiseConv(nnx.Module):
  """A k x k depthwise convolution without bias.

  impl 'conv' is XLA's grouped convolution; 'shifted' sums k*k strided slices of the
  padded input times per-channel weights: the same arithmetic as elementwise work,
  which XLA:CPU runs several times faster forward and backward; 'native' is a C++ CPU
  kernel (efficientnet_jax/native) that also computes both gradients in one pass.
  """

  def __init__(self, channels: int, kernel: int, stride: int, *, padding: str, impl: str,
               dtype: jnp.dtype, init: np.random.Generator):
    if impl not in IMPLS[1:]:
      raise ValueError(f"DepthwiseConv needs a resolved implementation {IMPLS[1:]}, got {impl!r}.")
    self.kernel = nnx.Param(he_normal(init, (kernel, kernel, 1, channels), kernel * kernel))
    self.stride = stride
    self.padding = padding
    self.impl = impl
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    return depthwise_conv(x.astype(self.dtype), self.kernel[...].astype(self.dtype), self.stride,
                          self.padding, self.impl)

  def with_batch_norms(self, x: jax.Array, before: BatchNorm | None, after: BatchNorm,
                       activation: str) -> jax.Array:
    """act(after(conv(x'))), x' = act(before(x)) (x' = x without `before`).

    With the native kernel and BatchNorms on their running statistics (evaluation, or
    frozen), the kernel applies both normalisations and activations to the values it reads
    and writes: no passes over x or the output of their own. Otherwise they run as layers.
    """
    act = ACTIVATIONS[activation]
    affine = after.inference_affine()
    fused = self.impl == "native" and affine is not None
    in_affine = before.inference_affine() if fused and before is not None else None
    if before is not None and in_affine is None:
      x = before(x, act)
    if not fused:
      return after(self(x), act)
    w = self.kernel[...].astype(self.dtype)
    pads = spatial_padding(x, w.shape[0], self.stride, self.padding)
    return _native_depthwise_affine_act(x.astype(self.dtype), w, *affine, in_affine, self.stride,
                                        pads, activation)


def depthwise_conv(x: jax.Array, w: jax.Array, stride: int, padding: str, impl: str) -> jax.Array:
  """Depthwise convolution of NHWC `x` with a (k, k, 1, C) kernel; impl 'conv', 'shifted'
  or 'native' (resolved, not 'auto')."""
  pads = spatial_padding(x, w.shape[0], stride, padding)
  if impl == "conv":
    return jax.lax.conv_general_dilated(
        x, w, window_strides=(stride, stride), padding=pads,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1],
    )
  if impl == "native":
    return _native_depthwise(x, w, stride, pads)
  return _shifted_depthwise(x, w, stride, pads)


def _accumulator(dtype: jnp.dtype) -> jnp.dtype:
  """Sums of taps run in float32 under bfloat16/float16 (the cast fuses; no copy is stored)."""
  return jnp.promote_types(dtype, jnp.float32)



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
  out_h, out_w = output_size(x, k, stride, pads)
  xp = jnp.pad(x, [(0, 0), pads[0], pads[1], (0, 0)])
  acc = _accumulator(x.dtype)
  out = sum(tap(xp, i, j, stride, out_h, out_w).astype(acc) * w[i, j, 0].astype(acc)
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
      dw.append(jnp.sum(tap(xp, i, j, stride, out_h, out_w) * g, axis=(0, 1, 2)))
      previous = dw[-1][0]
  return dx.astype(residuals[0].dtype), jnp.stack(dw).reshape(w.shape).astype(w.dtype)


_shifted_depthwise.defvjp(_shifted_depthwise_fwd, _shifted_depthwise_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _native_depthwise(x: jax.Array, w: jax.Array, stride: int,
                      pads: tuple[tuple[int, int], ...]) -> jax.Array:
  """The C++ kernel (efficientnet_jax/native): one pass over x forward, one call backward."""
  k, c = w.shape[0], w.shape[-1]
  return native.depthwise_forward(x, w.reshape(k, k, c), stride, pads,
                                  output_size(x, k, stride, pads))


def _native_depthwise_fwd(x, w, stride, pads):
  return _native_depthwise(x, w, stride, pads), (x, w)


def _native_depthwise_bwd(stride, pads, residuals, g):
  x, w = residuals
  k, c = w.shape[0], w.shape[-1]
  dx, dw = native.depthwise_backward(x, w.reshape(k, k, c), g.astype(x.dtype), stride, pads)
  return dx, dw.reshape(w.shape)


_native_depthwise.defvjp(_native_depthwise_fwd, _native_depthwise_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _native_depthwise_affine_act(x: jax.Array, w: jax.Array, mul: jax.Array, add: jax.Array,
                                 in_affine: tuple[jax.Array, jax.Array] | None, stride: int,
                                 pads: tuple[tuple[int, int], ...], activation: str) -> jax.Array:
  """activation(conv(x') * mul + add), x' = x or activation(x * in_mul + in_add) with
  `in_affine` = (in_mul, in_add)."""
  k, c = w.shape[0], w.shape[-1]
  in_mul, in_add = in_affine or (None, None)
  return native.depthwise_forward(x, w.reshape(k, k, c), stride, pads,
                                  output_size(x, k, stride, pads), mul, add, activation,
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
