"""EfficientNet-B0…B7 and Lite0…4 in Flax NNX, trained on Stanford Cars."""

__version__ = "0.1.0"
