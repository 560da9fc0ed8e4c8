"""The EfficientNet network and its factory."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from efficientnet_jax.models import depthwise, layers, specs
from efficientnet_jax.models.blocks import BLOCKS, ConvBnAct, LayerOptions, PointwiseBnAct
from efficientnet_jax.models.options import ModelOptions

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class EfficientNet(nnx.Module):
  """EfficientNet-B0…B7 / Lite0…4 / V2 on NHWC input; returns float32 logits.

  Parameters are named after the structure: stem.{conv,bn}, stages_{i}_{j}.{expand_conv,
  expand_bn, dw_conv, dw_bn, se.{reduce,expand}, project_conv, project_bn} (MBConv) or
  .{fused_conv, fused_bn, project_conv, project_bn} (Fused-MBConv), head.{conv,bn},
  classifier. Use model.train() / model.eval() to switch modes. The backend (CPU or an
  accelerator) is read once, here: it picks the depthwise implementation for 'auto' and
  the CPU-specific forms of the stem and the squeeze-excite gate.
  """

  def __init__(self, options: ModelOptions):
    spec = options.spec
    backend = jax.default_backend()
    opts = LayerOptions(
        padding=options.padding,
        depthwise=depthwise.resolve(options.depthwise, backend, jax.device_count()),
        dtype=DTYPES[options.dtype], bn_momentum=options.bn_momentum,
        bn_epsilon=options.bn_epsilon, freeze_bn=options.freeze_bn,
        activation=spec.family.activation, cpu_forms=backend == "cpu")
    init = np.random.default_rng(options.seed)  # Initial parameter values (see layers.he_normal).
    rngs = nnx.Rngs(dropout=options.seed)  # Dropout and drop-path streams.
    self.options = options
    self.block_specs = tuple(specs.build_blocks(spec, options.drop_connect_rate))
    self.stem = ConvBnAct(options.in_channels, specs.stem_channels(spec), 3, 2, opts, init=init)
    for block in self.block_specs:
      setattr(self, block.name, BLOCKS[block.block](block, opts, init=init, rngs=rngs))
    features = specs.head_channels(spec)
    self.head = PointwiseBnAct(self.block_specs[-1].out_channels, features, opts, init=init)
    self.dropout = nnx.Dropout(options.resolved_dropout_rate, rngs=rngs)
    # tf: U(+-1/sqrt(num_classes)) as the official TF code (bias 0); torch: kernel and bias
    # U(+-1/sqrt(features)) as nn.Linear (the original study's fresh head); zeros: big_vision's
    # fine-tuning head.
    n = options.num_classes
    bound = {"tf": n**-0.5, "torch": features**-0.5, "zeros": 0.0}[options.head_init]
    self.classifier = layers.Dense(features, n, use_bias=True, dtype=jnp.float32, init=init,
                                   uniform_bound=bound, uniform_bias=options.head_init == "torch")
    self.opts = opts

  @property
  def arch(self) -> str:
    return self.options.arch

  @property
  def num_classes(self) -> int:
    return self.options.num_classes

  @property
  def in_channels(self) -> int:
    return self.options.in_channels

  @property
  def blocks(self) -> list[nnx.Module]:
    return [getattr(self, block.name) for block in self.block_specs]

  def features(self, x: jax.Array) -> jax.Array:
    """Pooled features (float32, [N, head channels]) before dropout and classifier."""
    x = self.stem(x.astype(self.opts.dtype))
    for block in self.blocks:
      x = nnx.remat(_apply)(block, x) if self.options.remat else block(x)
    x = self.head(x)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.classifier(self.dropout(self.features(x)))


def _apply(block: nnx.Module, x: jax.Array) -> jax.Array:
  return block(x)


def create_model(arch: str, **options: Any) -> EfficientNet:
  """Builds architecture `arch` with ModelOptions `options` (see models/options.py),
  e.g. create_model("b0", num_classes=196, dtype="bfloat16")."""
  return EfficientNet(ModelOptions(arch=arch, **options))
