"""Native CPU kernels: C++ XLA FFI custom calls, compiled on first use with the host's C++ compiler.

`depthwise.cc` holds the depthwise convolution (forward, and input + kernel gradients in one
call). XLA:CPU has no fast depthwise convolution, and the `shifted` formulation in plain JAX
still makes several passes over the activations in its backward pass (README "Performance").
"""

from efficientnet_jax.native.build import NativeBuildError, load, unavailable_reason
from efficientnet_jax.native.depthwise import depthwise_backward, depthwise_forward

__all__ = ["NativeBuildError", "depthwise_backward", "depthwise_forward", "load",
           "unavailable_reason"]
