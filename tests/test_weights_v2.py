"""Logit parity of EfficientNetV2 weights in timm's tf_efficientnetv2_* layout.

The reference is Keras' EfficientNetV2 (keras.applications, a port of the official TF
model; timm itself does not import beside this CPU torch, as it needs torchvision). Its
randomized weights are written out in timm's state-dict layout (names and PyTorch tensor
layouts) and go through our converter, so the key map, the kernel layouts, Fused-MBConv,
TF 'same' padding and BN epsilon are all checked. Two input sizes take the two padding
paths of the stride-2 layers: 64 px pads (0, 1) at every one, 33 px (1, 1) at every one.
"""

from __future__ import annotations

import re

import keras  # Comes with tensorflow-cpu, a dependency.
import numpy as np
import pytest

import weights_reference as ref
from efficientnet_jax.models import ARCHS
from efficientnet_jax.weights import SOURCES, create_pretrained, keymaps
from efficientnet_jax.weights.convention import (IMAGENET_MEAN, INCEPTION_MEAN, default_convention,
                                                 pretraining)
from efficientnet_jax.weights.converter import convert_tensors, infer_arch
from efficientnet_jax.weights.known import KNOWN_WEIGHTS

pytestmark = pytest.mark.torch  # weights_reference imports torch.

KERAS_MODELS = {"v2_b0": "EfficientNetV2B0", "v2_s": "EfficientNetV2S"}
NUM_IMAGES = 4
# BatchNorm statistics come from this many images (the compared ones among them): from the
# 4 alone, V2-S's deep 2x2 maps made the network chaotic (Keras' own float32 logits 5e-4
# of their scale from float64); from 16, 2e-5.
NUM_CALIBRATION = 16


def _build_keras(arch: str, dtype: str) -> keras.Model:
  """The Keras model with a 1000-class linear head on pooled features, any input size."""
  previous = keras.config.dtype_policy().name
  keras.config.set_dtype_policy(dtype)
  try:
    base = getattr(keras.applications, KERAS_MODELS[arch])(
        include_top=False, pooling="avg", weights=None, input_shape=(None, None, 3),
        include_preprocessing=False)
    logits = keras.layers.Dense(1000, name="predictions")(base.output)
    return keras.Model(base.input, logits)
  finally:
    keras.config.set_dtype_policy(previous)


def _keras_models(arch: str) -> tuple[keras.Model, keras.Model]:
  """Fresh (float32, float64) copies of the Keras model, seeded; the float64 one gives the
  truth. Fresh per test: a second _randomize of one model left it nearly input-independent."""
  keras.utils.set_random_seed(0)
  return _build_keras(arch, "float32"), _build_keras(arch, "float64")


def _randomize(model: keras.Model, calibration: np.ndarray, seed: int = 0) -> None:
  """Random BatchNorm affines and statistics, SE biases and classifier, as
  weights_reference.randomize does for PyTorch models.

  In one evaluation pass over `calibration` (which holds the compared images), each
  BatchNorm takes the statistics of its input (as it arrives through the already randomized
  layers before it), perturbed at random; each block's last BatchNorm gets a small scale.
  Calibrated on other images only, V2-S's 40 blocks drift to logits ~140, where float32
  rounding alone moves them by 0.5.
  """
  rng = np.random.default_rng(seed)
  bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]

  def calibrating(bn):
    def call(inputs, training=None, mask=None):
      x = np.asarray(inputs, np.float64)
      mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
      n = var.shape[0]
      bn.moving_variance.assign((var * rng.uniform(0.8, 1.2, n)).astype(np.float32))
      bn.moving_mean.assign((mean + rng.standard_normal(n) * 0.1 * np.sqrt(var)).astype(np.float32))
      return type(bn).call(bn, inputs, training=False)
    return call

  for bn in bns:
    n = bn.gamma.shape[0]
    scale = 0.2 if bn.name.endswith("project_bn") else 1.0
    bn.gamma.assign((rng.uniform(0.75, 1.25, n) * scale).astype(np.float32))
    bn.beta.assign((rng.standard_normal(n) * 0.1).astype(np.float32))
    bn.call = calibrating(bn)
  try:
    model(calibration, training=False)
  finally:
    for bn in bns:
      del bn.call
  for layer in model.layers:
    if layer.name.endswith(("se_reduce", "se_expand")):
      layer.bias.assign((rng.standard_normal(layer.bias.shape) * 0.1).astype(np.float32))
  fc = model.get_layer("predictions")
  fc.kernel.assign((rng.standard_normal(fc.kernel.shape) * 0.5 / fc.kernel.shape[0] ** 0.5
                    ).astype(np.float32))
  fc.bias.assign((rng.standard_normal(fc.bias.shape) * 0.1).astype(np.float32))


# Keras layer (suffix) -> timm module, per block kind (timm's efficientnet_blocks).
_FUSED_NO_EXPANSION = {"project_conv": "conv", "project_bn": "bn1"}  # ConvBnAct.
_FUSED = {"expand_conv": "conv_exp", "expand_bn": "bn1", "project_conv": "conv_pwl",
          "project_bn": "bn2"}  # EdgeResidual.
_MBCONV = {"expand_conv": "conv_pw", "expand_bn": "bn1", "dwconv2": "conv_dw", "bn": "bn2",
           "se_reduce": "se.conv_reduce", "se_expand": "se.conv_expand",
           "project_conv": "conv_pwl", "project_bn": "bn3"}  # InvertedResidual.
_TOP = {"stem_conv": "conv_stem", "stem_bn": "bn1", "top_conv": "conv_head", "top_bn": "bn2",
        "predictions": "classifier"}


def _timm_module(layer_name: str, block_layers: set[str]) -> str | None:
  """The timm module holding a Keras layer's weights ('blocks.{stage}.{index}.…')."""
  if layer_name in _TOP:
    return _TOP[layer_name]
  m = re.fullmatch(r"block(\d+)([a-z])_(\w+)", layer_name)
  if m is None:
    return None
  prefix = f"block{m.group(1)}{m.group(2)}_"
  if f"{prefix}dwconv2" in block_layers:
    table = _MBCONV
  elif f"{prefix}expand_conv" in block_layers:
    table = _FUSED
  else:
    table = _FUSED_NO_EXPANSION
  if m.group(3) not in table:
    return None
  return f"blocks.{int(m.group(1)) - 1}.{ord(m.group(2)) - ord('a')}.{table[m.group(3)]}"


def timm_state_dict(model: keras.Model) -> dict[str, np.ndarray]:
  """The Keras model's weights as timm's tf_efficientnetv2 state dict (PyTorch layouts)."""
  names = {layer.name for layer in model.layers}
  out = {}
  for layer in model.layers:
    module = _timm_module(layer.name, names)
    if module is None or not layer.weights:
      continue
    if isinstance(layer, keras.layers.BatchNormalization):
      for theirs, ours in (("weight", layer.gamma), ("bias", layer.beta),
                           ("running_mean", layer.moving_mean), ("running_var", layer.moving_variance)):
        out[f"{module}.{theirs}"] = np.asarray(ours)
      continue
    kernel = np.asarray(layer.kernel)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
      out[f"{module}.weight"] = kernel.transpose(2, 3, 0, 1)  # (k, k, C, 1) -> (C, 1, k, k).
    elif isinstance(layer, keras.layers.Conv2D):
      out[f"{module}.weight"] = kernel.transpose(3, 2, 0, 1)  # HWIO -> OIHW.
    else:
      out[f"{module}.weight"] = kernel.T  # Dense (in, out) -> nn.Linear (out, in).
    if layer.use_bias:
      out[f"{module}.bias"] = np.asarray(layer.bias)
  return out


@pytest.mark.parametrize("size", [64, 33], ids=["pad01", "pad11"])
@pytest.mark.parametrize("arch", list(KERAS_MODELS))
def test_float32_logits_match_keras_efficientnetv2(arch, size):
  model32, model64 = _keras_models(arch)
  calibration = np.random.default_rng(size).standard_normal((NUM_CALIBRATION, size, size, 3))
  calibration = calibration.astype(np.float32)
  images = calibration[:NUM_IMAGES]
  _randomize(model32, calibration)
  model64.set_weights([w.astype(np.float64) for w in model32.get_weights()])
  state_dict = timm_state_dict(model32)

  ours, convention = create_pretrained(convert_tensors(state_dict, arch, SOURCES["timm-tf"]))
  expected = np.asarray(model32(images, training=False))
  truth = np.asarray(model64(images.astype(np.float64), training=False))
  actual = ref.jax_logits(ours, images.transpose(0, 3, 1, 2))

  ref.assert_logit_parity(actual, expected, truth)
  assert (ours.options.padding, ours.options.bn_epsilon) == ("same", 1e-3)


def test_converter_infers_v2_and_a_21k_head_has_no_class_names():
  state_dict = timm_state_dict(_keras_models("v2_b0")[0])
  assert infer_arch(state_dict, "timm") == ["v2_b0"]
  rng = np.random.default_rng(0)
  state_dict["classifier.weight"] = rng.standard_normal((21843, 1280)).astype(np.float32)
  state_dict["classifier.bias"] = np.zeros(21843, np.float32)
  weights = convert_tensors(state_dict, "v2_b0", SOURCES["timm-tf"], "tf_efficientnetv2_b0.pth")
  assert weights.num_classes == 21843 and weights.class_names == ()
  assert weights.origin["pretraining"] == "in21k" and weights.convention.mean == (0.5, 0.5, 0.5)
  with pytest.raises(ValueError, match="'lukemelas' checkpoint layout has no v2_b0"):
    keymaps.tensor_map("v2_b0", "lukemelas")


@pytest.mark.parametrize("name,arch,mean,crop_pct,resize", [
    ("tf_efficientnetv2_b0", "v2_b0", IMAGENET_MEAN, 0.875, "shorter_side"),
    ("tf_efficientnetv2_b3", "v2_b3", IMAGENET_MEAN, 0.904, "shorter_side"),
    ("tf_efficientnetv2_b3.in21k_ft_in1k", "v2_b3", INCEPTION_MEAN, 0.9, "square"),
    ("tf_efficientnetv2_s.in21k_ft_in1k", "v2_s", INCEPTION_MEAN, 1.0, "shorter_side"),
    ("tf_efficientnetv2_m", "v2_m", INCEPTION_MEAN, 1.0, "square"),
    ("tf_efficientnetv2_xl.in21k", "v2_xl", INCEPTION_MEAN, 1.0, "square"),
])
def test_known_v2_weights_carry_timms_input_conventions(name, arch, mean, crop_pct, resize):
  """timm's pretrained configs: [-1, 1] input except B0-B3 trained on ImageNet-1k alone."""
  known = KNOWN_WEIGHTS[name]
  assert (known.arch, known.source) == (arch, "timm-tf")
  assert known.url.startswith("https://") and known.filename.endswith((".pth", ".safetensors"))
  convention = default_convention(known.source, arch, pretraining(known.filename, 1000))
  assert (convention.mean, convention.crop_pct, convention.resize) == (mean, crop_pct, resize)
  assert convention.image_size == ARCHS[arch].resolution
