"""EfficientNet models (Flax NNX)."""

from efficientnet_jax.models.efficientnet import EfficientNet, create_model
from efficientnet_jax.models.specs import VARIANTS, get_variant

__all__ = ["EfficientNet", "create_model", "VARIANTS", "get_variant"]
