"""The input convention that travels with a set of weights.

A network only reproduces its published accuracy on inputs prepared the way it was
trained: same normalization, value range, resize interpolation and eval crop.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from efficientnet_jax.models import specs

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)
# Official TF EfficientNet-Lite: (x - 127) / 128 on 0-255 pixels.
TF_LITE_MEAN = (127.0 / 255,) * 3
TF_LITE_STD = (128.0 / 255,) * 3


@dataclasses.dataclass(frozen=True)
class InputConvention:
  """How to turn uint8 pixels into the network's input.

  Pixels 0..255 are mapped linearly onto `value_range`, then normalized per channel by
  (x - mean) / std, mean and std in the units of `value_range`. At eval, a central box is
  resized (`interpolation`) to `image_size` pixels square: with resize 'shorter_side' the
  largest centred square, with 'square' the whole image (aspect ratio not kept), either
  shrunk to `crop_pct` of its sides.
  """

  mean: tuple[float, ...]
  std: tuple[float, ...]
  value_range: tuple[float, float] = (0.0, 1.0)
  interpolation: str = "bicubic"
  crop_pct: float = 0.875
  image_size: int = 224
  resize: str = "shorter_side"

  def for_channels(self, in_channels: int) -> InputConvention:
    """The convention for a 1-channel (grayscale) model: the RGB statistics averaged."""
    if in_channels == len(self.mean):
      return self
    if in_channels != 1:
      raise ValueError(f"in_channels must be 1 or {len(self.mean)}, got {in_channels}.")
    return dataclasses.replace(
        self, mean=(float(np.mean(self.mean)),), std=(float(np.mean(self.std)),))

  def in_unit_range(self) -> InputConvention:
    """The same normalization with value_range (0, 1): mean and std in units of pixels / 255."""
    low, high = self.value_range
    return dataclasses.replace(
        self, value_range=(0.0, 1.0), mean=tuple((v - low) / (high - low) for v in self.mean),
        std=tuple(v / (high - low) for v in self.std))

  def normalize(self, pixels: np.ndarray) -> np.ndarray:
    """uint8 [..., H, W, C] pixels -> float32 network input."""
    low, high = self.value_range
    x = pixels.astype(np.float32) * np.float32((high - low) / 255.0) + np.float32(low)
    return (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, data: dict) -> InputConvention:
    return cls(
        mean=tuple(data["mean"]), std=tuple(data["std"]),
        value_range=tuple(data["value_range"]), interpolation=data["interpolation"],
        crop_pct=float(data["crop_pct"]), image_size=int(data["image_size"]),
        resize=data.get("resize", "shorter_side"))


def tf_crop_pct(image_size: int) -> float:
  """The official TF eval crop: resize to size + 32, centre-crop size."""
  return round(image_size / (image_size + 32), 3)


# timm's native weights are evaluated at a larger size than they were trained at, uncropped.
_TIMM_NATIVE_EVAL = {"b0": (224, 0.875), "b1": (256, 1.0), "b2": (288, 1.0), "b3": (320, 1.0),
                     "b4": (384, 1.0)}

# torchvision's IMAGENET1K_V1 transforms, bicubic: (crop size, resize size of the short side).
_TORCHVISION_EVAL = {"b0": (224, 256), "b1": (240, 256), "b2": (288, 288), "b3": (300, 320),
                     "b4": (380, 384), "b5": (456, 456), "b6": (528, 528), "b7": (600, 600)}


# What ImageNet weights were trained on: ImageNet-1k, ImageNet-21k (21843 classes), or
# ImageNet-21k and then fine-tuned on ImageNet-1k (timm's tags).
PRETRAININGS = ("in1k", "in21k", "in21k_ft_in1k")
IMAGENET21K_CLASSES = 21843


def pretraining(checkpoint_name: str, num_classes: int) -> str:
  """The pretraining of a checkpoint, from its head and its (timm) file name: 'in21k_ft_in1k'
  ('_21ft1k', '_in21ft1k'), 'in21k' ('_21k', '_in21k', or a 21843-class head), else 'in1k'."""
  name = checkpoint_name.lower()
  if num_classes == IMAGENET21K_CLASSES:
    return "in21k"
  if "21ft1k" in name or "in21k_ft_in1k" in name:
    return "in21k_ft_in1k"
  return "in21k" if "21k" in name else "in1k"


# timm's tf_efficientnetv2 evaluation (crop fraction, resize) at the arch's resolution where
# it is not the rule of _v2_convention (timm's pretrained configs; 'square' = its 'squash').
_V2_EVAL = {("v2_b3", "in21k"): (0.904, "shorter_side"), ("v2_b3", "in21k_ft_in1k"): (0.9, "square")}


def _v2_convention(arch: str, size: int, trained_on: str) -> InputConvention:
  """timm's tf_efficientnetv2_* conventions. B0…B3 trained on ImageNet-1k alone use the V1
  preprocessing (ImageNet mean/std, TF's size / (size + 32) crop); every other V2 weight
  takes [-1, 1] input (mean = std = 0.5) uncropped: S centre-cropped to a square, M/L/XL
  squashed whole into one (the official eval above 320 px)."""
  if arch.startswith("v2_b") and trained_on == "in1k":
    return InputConvention(IMAGENET_MEAN, IMAGENET_STD, crop_pct=tf_crop_pct(size), image_size=size)
  crop, resize = _V2_EVAL.get((arch, trained_on),
                              (1.0, "shorter_side" if arch == "v2_s" else "square"))
  return InputConvention(INCEPTION_MEAN, INCEPTION_STD, crop_pct=crop, image_size=size, resize=resize)


def default_convention(source: str, arch: str, trained_on: str = "in1k") -> InputConvention:
  """The published eval convention of ImageNet weights from `source` for `arch`, pretrained
  as `trained_on` (one of PRETRAININGS; it matters for EfficientNetV2 only)."""
  spec = specs.get_arch(arch)
  size = spec.resolution
  if spec.family in specs.V2_FAMILIES:
    return _v2_convention(arch, size, trained_on)
  tf_trained = source in ("timm-tf", "lukemelas")
  if spec.family is specs.LITE and tf_trained:
    # timm's ports of TF Lite rescale to [-1, 1]; the lukemelas-layout Lite ports keep
    # TF's (x - 127) / 128.
    mean, std = (INCEPTION_MEAN, INCEPTION_STD) if source == "timm-tf" else (TF_LITE_MEAN, TF_LITE_STD)
    return InputConvention(mean, std, crop_pct=tf_crop_pct(size), image_size=size)
  if tf_trained:
    return InputConvention(IMAGENET_MEAN, IMAGENET_STD, crop_pct=tf_crop_pct(size), image_size=size)
  if source == "torchvision" and arch in _TORCHVISION_EVAL:
    crop, resize = _TORCHVISION_EVAL[arch]
    return InputConvention(IMAGENET_MEAN, IMAGENET_STD, crop_pct=crop / resize, image_size=crop)
  size, crop = _TIMM_NATIVE_EVAL.get(arch, (size, 0.875))
  return InputConvention(IMAGENET_MEAN, IMAGENET_STD, crop_pct=crop, image_size=size)
