"""JAX calls of the native depthwise convolution (see depthwise.cc); CPU only."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from efficientnet_jax.native.build import load


def _attrs(stride: int, pads: tuple[tuple[int, int], tuple[int, int]]) -> dict[str, np.int64]:
  return {"stride": np.int64(stride), "pad_top": np.int64(pads[0][0]),
          "pad_left": np.int64(pads[1][0])}


def depthwise_forward(x: jax.Array, w: jax.Array, stride: int,
                      pads: tuple[tuple[int, int], tuple[int, int]], out_hw: tuple[int, int],
                      mul: jax.Array | None = None, add: jax.Array | None = None,
                      activation: str = "none", in_mul: jax.Array | None = None,
                      in_add: jax.Array | None = None, input_activation: str = "none"
                      ) -> jax.Array:
  """y = activation(depthwise conv of NHWC `x'` with a (k, k, C) kernel `w` * mul + add).

  x' = x, or with `input_activation` 'swish'/'relu6', x' = input_activation(x * in_mul +
  in_add) rounded to x's dtype (the layer before's BatchNorm + activation). `mul`, `add`,
  `in_mul`, `in_add` are per-channel float32 (defaults 1 and 0); activation 'none', 'swish'
  or 'relu6'. The affine map and activation apply to the float32 sums; y has x's dtype.
  """
  load()
  n, _, _, c = x.shape

  def per_channel(v: jax.Array | None, default: float) -> jax.Array:
    return jnp.full((c,), default, jnp.float32) if v is None else v.astype(jnp.float32)

  out = jax.ShapeDtypeStruct((n, *out_hw, c), x.dtype)
  return jax.ffi.ffi_call("efficientnet_jax_depthwise_forward", out, vmap_method="sequential")(
      x, w, per_channel(mul, 1.0), per_channel(add, 0.0), per_channel(in_mul, 1.0),
      per_channel(in_add, 0.0), activation=activation, input_activation=input_activation,
      **_attrs(stride, pads))


def depthwise_backward(x: jax.Array, w: jax.Array, dy: jax.Array, stride: int,
                       pads: tuple[tuple[int, int], tuple[int, int]]
                       ) -> tuple[jax.Array, jax.Array]:
  """(dx, dw) of the forward above for output gradient `dy` (x's dtype)."""
  load()
  outs = (jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct(w.shape, w.dtype))
  return jax.ffi.ffi_call("efficientnet_jax_depthwise_backward", outs,
                          vmap_method="sequential")(x, w, dy, **_attrs(stride, pads))
