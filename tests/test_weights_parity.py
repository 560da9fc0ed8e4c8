"""Logit parity of ported weights with the reference PyTorch EfficientNets.

Random initialisation with randomised BatchNorm statistics, eval mode, float32: the
port (key map, kernel layouts, padding, BN epsilon, SE order) must reproduce every
reference's logits within 1e-4, and be as close to the float64 result as PyTorch's own
float32 is (the residual differences are float32 rounding, not the port).
"""

from __future__ import annotations

import efficientnet_pytorch
import geffnet
import numpy as np
import pytest
import torch

import weights_reference as ref
from efficientnet_jax.weights import SOURCES, create_pretrained
from efficientnet_jax.weights.converter import convert_tensors

pytestmark = pytest.mark.torch

SIZE = 64  # Small images keep the suite fast; every stride-2 stage still sees padding.
TOLERANCE = 1e-4
CALIBRATION = ref.random_images(32, SIZE, seed=1)


def _geffnet(name: str) -> torch.nn.Module:
  torch.manual_seed(0)
  model = geffnet.create_model(name)
  return ref.randomize(model, [b for stage in model.blocks for b in stage], CALIBRATION)


def _lukemelas(name: str) -> torch.nn.Module:
  torch.manual_seed(0)
  # image_size fixes its Conv2dStaticSamePadding: TF 'same' padding at that size.
  model = efficientnet_pytorch.EfficientNet.from_name(name, image_size=SIZE)
  return ref.randomize(model, list(model._blocks), CALIBRATION)


# id: (reference builder, reference name, our arch, source).
REFERENCES = {
    "timm-tf_efficientnet_b0": (_geffnet, "tf_efficientnet_b0", "b0", "timm-tf"),
    "timm-tf_efficientnet_b2": (_geffnet, "tf_efficientnet_b2", "b2", "timm-tf"),
    "timm-efficientnet_b0": (_geffnet, "efficientnet_b0", "b0", "timm"),
    "timm-efficientnet_b2": (_geffnet, "efficientnet_b2", "b2", "timm"),
    "timm-tf_efficientnet_lite0": (_geffnet, "tf_efficientnet_lite0", "lite0", "timm-tf"),
    "lukemelas-efficientnet-b0": (_lukemelas, "efficientnet-b0", "b0", "lukemelas"),
    "lukemelas-efficientnet-b2": (_lukemelas, "efficientnet-b2", "b2", "lukemelas"),
}


@pytest.mark.parametrize("case", REFERENCES)
def test_float32_logits_match_reference(case):
  build, name, arch, source = REFERENCES[case]
  torch_model = build(name)
  weights = convert_tensors(ref.state_dict_numpy(torch_model), arch, SOURCES[source])
  model, _ = create_pretrained(weights)
  images = ref.random_images(8, SIZE, seed=2)

  expected = ref.torch_logits(torch_model, images)
  actual = ref.jax_logits(model, images)

  assert expected.std(axis=0).mean() > 0.1, "logits must depend on the input to compare anything"
  assert np.abs(actual - expected).max() <= TOLERANCE
  # And at the float32 floor: no further from float64 truth than PyTorch's float32 is.
  truth = ref.float64_logits(torch_model, images)
  assert np.abs(actual - truth).max() <= 2 * np.abs(expected - truth).max()
