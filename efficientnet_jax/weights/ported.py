"""PortedWeights, and their self-describing on-disk format: params.npz + metadata.json.

A converted weights directory holds
  params.npz     one float32 array per parameter / BatchNorm statistic, keyed by its
                 '/'-joined path in nnx.state(model) (e.g. 'stages_1_0/dw_conv/kernel');
  metadata.json  arch, padding, BN epsilon, input convention, class names, origin.
Both are plain formats (no pickle): numpy and any JSON reader can inspect them.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from efficientnet_jax.weights.convention import InputConvention
from efficientnet_jax.weights.errors import WeightsError

FORMAT = "efficientnet_jax.weights/1"
PARAMS_FILE = "params.npz"
METADATA_FILE = "metadata.json"


@dataclasses.dataclass(frozen=True)
class PortedWeights:
  """A full parameter set of our model and how to use it.

  padding and bn_epsilon are the model options the weights were trained with; the
  convention says how to prepare inputs; origin records the source checkpoint and the
  tensors skipped in conversion.
  """

  arch: str
  padding: str
  bn_epsilon: float
  convention: InputConvention
  class_names: tuple[str, ...]
  tensors: dict[str, np.ndarray]
  origin: dict

  @property
  def num_classes(self) -> int:
    return int(self.tensors["classifier/bias"].shape[0])

  @property
  def in_channels(self) -> int:
    return int(self.tensors["stem/conv/kernel"].shape[2])


def is_weights_dir(path: str | os.PathLike) -> bool:
  return os.path.isfile(os.path.join(path, METADATA_FILE))


def save_weights(weights: PortedWeights, directory: str | os.PathLike) -> None:
  """Writes params.npz and metadata.json into `directory` (created if needed)."""
  os.makedirs(directory, exist_ok=True)
  np.savez(os.path.join(directory, PARAMS_FILE), **weights.tensors)
  metadata = {
      "format": FORMAT,
      "arch": weights.arch,
      "padding": weights.padding,
      "bn_epsilon": weights.bn_epsilon,
      "num_classes": weights.num_classes,
      "in_channels": weights.in_channels,
      "input": weights.convention.to_json(),
      "class_names": list(weights.class_names),
      "origin": weights.origin,
  }
  with open(os.path.join(directory, METADATA_FILE), "w") as f:
    json.dump(metadata, f, indent=1)


def load_weights(directory: str | os.PathLike) -> PortedWeights:
  """Reads a directory written by save_weights."""
  meta_path = os.path.join(directory, METADATA_FILE)
  with open(meta_path) as f:
    meta = json.load(f)
  if meta.get("format") != FORMAT:
    raise WeightsError(f"{meta_path}: format {meta.get('format')!r} is not {FORMAT!r}; "
                     "re-convert the checkpoint with this version (python -m efficientnet_jax.convert).")
  with np.load(os.path.join(directory, PARAMS_FILE), allow_pickle=False) as npz:
    tensors = {k: npz[k] for k in npz.files}
  return PortedWeights(
      arch=meta["arch"], padding=meta["padding"], bn_epsilon=float(meta["bn_epsilon"]),
      convention=InputConvention.from_json(meta["input"]),
      class_names=tuple(meta["class_names"]), tensors=tensors, origin=meta["origin"])
