"""EfficientNet models (Flax NNX)."""

from efficientnet_jax.models.efficientnet import EfficientNet, create_model
from efficientnet_jax.models.options import ModelOptions
from efficientnet_jax.models.specs import ARCHS, get_arch

__all__ = ["ARCHS", "EfficientNet", "ModelOptions", "create_model", "get_arch"]
