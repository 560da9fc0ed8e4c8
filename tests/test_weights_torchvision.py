"""torchvision's EfficientNet state-dict layout, by construction.

torchvision cannot be installed here, but its EfficientNet-B0…B4 (V1) are the same
network as timm's native efficientnet_b*: symmetric padding, BN eps 1e-5, SE on the
block input's width / 4. A randomized timm-native reference with its state dict renamed
into torchvision's nn.Sequential key names (the mapping below, written independently of
the converter's key map) must convert, with the source and arch detected from the keys
alone, to our model with the reference's logits.
"""

from __future__ import annotations

import re

import pytest
import torch

import weights_reference as ref
from efficientnet_jax.weights import ConversionError, convert_checkpoint, create_pretrained
from efficientnet_jax.weights.sources import resolve_source

pytestmark = pytest.mark.torch

SIZE = 64
CALIBRATION = ref.random_images(32, SIZE, seed=1)

# timm block layer -> index in torchvision's MBConv.block (".0" conv / ".1" BN of a
# Conv2dNormActivation, or the SqueezeExcitation's fc1/fc2).
_DEPTHWISE_SEPARABLE = {"conv_dw": "0.0", "bn1": "0.1", "se.conv_reduce": "1.fc1",
                        "se.conv_expand": "1.fc2", "conv_pw": "2.0", "bn2": "2.1"}
_INVERTED_RESIDUAL = {"conv_pw": "0.0", "bn1": "0.1", "conv_dw": "1.0", "bn2": "1.1",
                      "se.conv_reduce": "2.fc1", "se.conv_expand": "2.fc2", "conv_pwl": "3.0",
                      "bn3": "3.1"}
_TOP_LEVEL = {"conv_stem": "features.0.0", "bn1": "features.0.1", "conv_head": "features.8.0",
              "bn2": "features.8.1", "classifier": "classifier.1"}
_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(\d+)\.(.+)\.(\w+)$")


def torchvision_key(timm_key: str) -> str:
  """A timm / geffnet EfficientNet-B* key -> torchvision's name for the same tensor."""
  match = _BLOCK_KEY.match(timm_key)
  if match:
    stage, index, layer, field = match.groups()
    layers = _DEPTHWISE_SEPARABLE if stage == "0" else _INVERTED_RESIDUAL
    return f"features.{int(stage) + 1}.{index}.block.{layers[layer]}.{field}"
  layer, field = timm_key.rsplit(".", 1)
  return f"{_TOP_LEVEL[layer]}.{field}"


def _torchvision_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
  return {torchvision_key(k): v for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def b0():
  return ref.randomized_geffnet("efficientnet_b0", CALIBRATION)


def test_layout_is_detected_from_the_keys(b0):
  source = resolve_source("auto", _torchvision_state_dict(b0), "pytorch_model.bin")
  assert (source.name, source.padding, source.epsilon("b0"), source.epsilon("b7")) == (
      "torchvision", "symmetric", 1e-5, 1e-3)


@pytest.mark.parametrize("name", ["efficientnet_b0", "efficientnet_b2"])
def test_float32_logits_match_reference(name, b0, tmp_path):
  reference = b0 if name == "efficientnet_b0" else ref.randomized_geffnet(name, CALIBRATION)
  path = tmp_path / "checkpoint.pth"  # A name that says nothing: the keys must suffice.
  torch.save(_torchvision_state_dict(reference), path)

  weights = convert_checkpoint(path, source="auto")
  model, convention = create_pretrained(weights)
  images = ref.random_images(8, SIZE, seed=2)
  expected = ref.torch_logits(reference, images)
  actual = ref.jax_logits(model, images)

  assert (weights.arch, weights.origin["source"]) == (name[-2:], "torchvision")
  assert (weights.padding, weights.bn_epsilon) == ("symmetric", 1e-5)
  assert convention.interpolation == "bicubic" and convention.mean == (0.485, 0.456, 0.406)
  ref.assert_logit_parity(actual, expected, ref.float64_logits(reference, images))


def test_missing_tensor_is_named(b0, tmp_path):
  state = _torchvision_state_dict(b0)
  del state["features.2.0.block.1.0.weight"]
  path = tmp_path / "efficientnet_b0.pth"
  torch.save(state, path)
  with pytest.raises(ConversionError, match=r"missing tensor 'features\.2\.0\.block\.1\.0\.weight' "
                                           r"\(96, 1, 3, 3\) for stages_1_0/dw_conv/kernel"):
    convert_checkpoint(path, arch="b0")
