"""The EfficientNet network and its factory."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from efficientnet_jax.models import layers, specs
from efficientnet_jax.models.blocks import ConvBnAct, LayerOptions, MBConv, PointwiseBnAct

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
HEAD_INITS = ("tf", "torch", "zeros")


class EfficientNet(nnx.Module):
  """EfficientNet-B0…B7 / Lite0…4 on NHWC input; returns float32 logits.

  Parameters are named after the structure: stem.{conv,bn}, stages_{i}_{j}.{expand_conv,
  expand_bn, dw_conv, dw_bn, se.{reduce,expand}, project_conv, project_bn}, head.{conv,bn},
  classifier. Use model.train() / model.eval() to switch modes.
  """

  def __init__(self, name: str, *, num_classes: int, in_channels: int, padding: str,
               dropout_rate: float, drop_connect_rate: float, bn_momentum: float,
               bn_epsilon: float, dtype: str, depthwise: str, freeze_bn: bool, remat: bool,
               head_init: str, seed: int):
    variant = specs.get_variant(name)
    if in_channels not in (1, 3):
      raise ValueError(f"model.in_channels must be 1 (grayscale) or 3 (RGB), got {in_channels}.")
    if dtype not in DTYPES:
      raise ValueError(f"Unknown compute dtype {dtype!r} (config field model.dtype); use one of {tuple(DTYPES)}.")
    if head_init not in HEAD_INITS:
      raise ValueError(f"Unknown classifier init {head_init!r} (config field model.head_init); "
                       f"use one of {HEAD_INITS}.")
    layers.check_padding(padding)
    opts = LayerOptions(
        padding=padding, depthwise=layers.resolve_depthwise(depthwise), dtype=DTYPES[dtype],
        bn_momentum=bn_momentum, bn_epsilon=bn_epsilon, freeze_bn=freeze_bn,
        activation="relu6" if variant.lite else "swish",
    )
    init = np.random.default_rng(seed)  # Initial parameter values (see layers.he_normal).
    rngs = nnx.Rngs(dropout=seed)  # Dropout and drop-path streams.
    self.arch = name
    self.variant = variant
    self.block_specs = tuple(specs.build_blocks(variant, drop_connect_rate))
    self.stem = ConvBnAct(in_channels, specs.stem_channels(variant), 3, 2, opts, init=init)
    for spec in self.block_specs:
      setattr(self, spec.name, MBConv(spec, opts, init=init, rngs=rngs))
    features = specs.head_channels(variant)
    self.head = PointwiseBnAct(self.block_specs[-1].out_channels, features, opts, init=init)
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
    # tf: U(+-1/sqrt(num_classes)) as the official TF code; torch: U(+-1/sqrt(features)) as
    # nn.Linear (the original study's fresh head); zeros: big_vision's fine-tuning head.
    bound = {"tf": num_classes**-0.5, "torch": features**-0.5, "zeros": 0.0}[head_init]
    self.classifier = layers.Dense(features, num_classes, use_bias=True, dtype=jnp.float32,
                                   init=init, uniform_bound=bound)
    self.num_classes = num_classes
    self.remat = remat
    self.in_channels = in_channels
    self.opts = opts

  @property
  def blocks(self) -> list[MBConv]:
    return [getattr(self, spec.name) for spec in self.block_specs]

  def features(self, x: jax.Array) -> jax.Array:
    """Pooled features (float32, [N, head channels]) before dropout and classifier."""
    x = self.stem(x.astype(self.opts.dtype))
    for block in self.blocks:
      x = nnx.remat(_apply)(block, x) if self.remat else block(x)
    x = self.head(x)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.classifier(self.dropout(self.features(x)))


def _apply(block: nnx.Module, x: jax.Array) -> jax.Array:
  return block(x)


def create_model(
    name: str,
    *,
    num_classes: int = 1000,
    in_channels: int = 3,
    padding: str = "same",
    dropout_rate: float | None = None,
    drop_connect_rate: float = 0.2,
    bn_momentum: float = 0.99,
    bn_epsilon: float = 1e-3,
    dtype: str = "float32",
    depthwise: str = "auto",
    freeze_bn: bool = False,
    remat: bool = False,
    head_init: str = "tf",
    seed: int = 0,
) -> EfficientNet:
  """Builds a named variant; `dropout_rate=None` (or < 0) takes the variant's default.

  remat=True recomputes each block's activations in the backward pass instead of
  storing them (jax.checkpoint per block): less memory for B5-B7 at full resolution.
  head_init: the classifier's initialization, 'tf' (official), 'torch' or 'zeros'.
  """
  variant = specs.get_variant(name)
  if dropout_rate is None or dropout_rate < 0:
    dropout_rate = variant.dropout
  return EfficientNet(
      name, num_classes=num_classes, in_channels=in_channels, padding=padding,
      dropout_rate=dropout_rate, drop_connect_rate=drop_connect_rate, bn_momentum=bn_momentum,
      bn_epsilon=bn_epsilon, dtype=dtype, depthwise=depthwise, freeze_bn=freeze_bn,
      remat=remat, head_init=head_init, seed=seed,
  )
