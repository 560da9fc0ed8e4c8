"""Putting ported weights into a model: resolving a spec, head replacement, grayscale stem."""

from __future__ import annotations

import os
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from efficientnet_jax.models import EfficientNet, create_model
from efficientnet_jax.weights.cache import fetch_known
from efficientnet_jax.weights.convention import InputConvention
from efficientnet_jax.weights.converter import convert_checkpoint
from efficientnet_jax.weights.known import KNOWN_WEIGHTS
from efficientnet_jax.weights.ported import PortedWeights, is_weights_dir, load_weights
from efficientnet_jax.errors import ConfigError, NotFoundError

_CLASSIFIER = "classifier/"
_STEM_KERNEL = "stem/conv/kernel"


def resolve_weights(spec: str, *, arch: str | None = None, source: str = "auto") -> PortedWeights:
  """Weights from a spec: a converted weights directory, a raw PyTorch checkpoint
  (converted on the fly; `arch`/`source` as for convert) or a known name (weight cache)."""
  if os.path.isdir(spec):
    if not is_weights_dir(spec):
      raise NotFoundError(f"{spec} is a directory without metadata.json: not converted "
                              "weights (python -m efficientnet_jax.convert writes them).")
    return load_weights(spec)
  if os.path.isfile(spec):
    return convert_checkpoint(spec, arch=arch, source=source)
  if spec in KNOWN_WEIGHTS:
    return fetch_known(spec)
  raise NotFoundError(
      f"Pretrained weights {spec!r} (config field pretrained / flag --weights) are neither "
      f"a file, a converted weights directory nor a known name ({', '.join(KNOWN_WEIGHTS)}).")


def _check_compatible(model: EfficientNet, weights: PortedWeights) -> None:
  wanted = {"arch": weights.arch, "padding": weights.padding, "bn_epsilon": weights.bn_epsilon}
  have = {k: getattr(model.options, k) for k in wanted}
  wrong = [k for k in wanted if wanted[k] != have[k]]
  if wrong:
    fixes = ", ".join(f"model.{k}={wanted[k]!r} (is {have[k]!r})" for k in wrong)
    raise ConfigError(
        f"The weights ({weights.origin.get('checkpoint', weights.arch)}) need {fixes}; set these "
        "config fields, or build the model with weights.create_pretrained.")


def _stem_kernel(kernel: np.ndarray, in_channels: int) -> np.ndarray:
  """The stem kernel for `in_channels`; RGB -> grayscale sums over the input channels, so
  a gray image gives the features the RGB network gives that image replicated 3 times."""
  if kernel.shape[2] == in_channels:
    return kernel
  if in_channels == 1:
    return kernel.sum(axis=2, keepdims=True)
  raise ConfigError(f"The weights' stem takes {kernel.shape[2]} input channel(s); a model with "
                   f"model.in_channels={in_channels} cannot use them.")


def load_pretrained(model: EfficientNet, weights: str | PortedWeights) -> InputConvention:
  """Fills `model` in place with pretrained weights; returns their input convention.

  `weights` is a PortedWeights or a spec for resolve_weights. Every parameter and
  BatchNorm statistic is loaded, except the classifier when the model's num_classes
  differs from the weights' (the model's own fresh initialisation is kept: fine-tuning).
  A 1-channel model gets the RGB stem summed over channels. The returned convention is
  adapted to model.in_channels.
  """
  if isinstance(weights, str):
    weights = resolve_weights(weights, arch=model.arch)
  _check_compatible(model, weights)
  keep_head = model.num_classes == weights.num_classes
  state = nnx.state(model, (nnx.Param, nnx.BatchStat))
  for path, variable in nnx.to_flat_state(state):
    key = "/".join(map(str, path))
    if key.startswith(_CLASSIFIER) and not keep_head:
      continue
    value = weights.tensors[key]
    if key == _STEM_KERNEL:
      value = _stem_kernel(value, model.in_channels)
    if value.shape != variable.shape:
      raise ConfigError(f"Pretrained tensor {key} has shape {value.shape}, the model's "
                       f"{variable.shape}; the weights do not fit this model.")
    variable.value = jnp.asarray(value, variable.dtype)
  nnx.update(model, state)
  return weights.convention.for_channels(model.in_channels)


def create_pretrained(weights: str | PortedWeights, **model_kwargs: Any) -> tuple[EfficientNet, InputConvention]:
  """A model built as the weights need (arch, padding, BN epsilon), filled with them.

  model_kwargs go to create_model (num_classes defaults to the weights' head).
  """
  if isinstance(weights, str):
    weights = resolve_weights(weights)
  model_kwargs.setdefault("num_classes", weights.num_classes)
  model = create_model(weights.arch, padding=weights.padding, bn_epsilon=weights.bn_epsilon, **model_kwargs)
  return model, load_pretrained(model, weights)
