"""Porting ImageNet checkpoints into our Flax NNX EfficientNet.

  weights = resolve_weights("tf_efficientnet_b0")        # known name, file or directory
  model = create_model("b0", num_classes=196, padding=weights.padding,
                       bn_epsilon=weights.bn_epsilon)
  convention = load_pretrained(model, weights)            # fresh 196-class head

or in one step: model, convention = create_pretrained("tf_efficientnet_b0", num_classes=196).
"""

from efficientnet_jax.weights.cache import WeightsUnavailableError, cache_dir
from efficientnet_jax.weights.convention import InputConvention
from efficientnet_jax.weights.converter import ConversionError, convert_checkpoint, infer_arch
from efficientnet_jax.weights.errors import WeightsError
from efficientnet_jax.weights.known import KNOWN_WEIGHTS
from efficientnet_jax.weights.loading import create_pretrained, load_pretrained, resolve_weights
from efficientnet_jax.weights.ported import PortedWeights, load_weights, save_weights
from efficientnet_jax.weights.sources import SOURCE_NAMES, SOURCES

__all__ = [
    "KNOWN_WEIGHTS", "SOURCES", "SOURCE_NAMES", "ConversionError", "InputConvention",
    "PortedWeights", "WeightsError", "WeightsUnavailableError", "cache_dir", "convert_checkpoint",
    "create_pretrained", "infer_arch", "load_pretrained", "load_weights", "resolve_weights",
    "save_weights",
]
