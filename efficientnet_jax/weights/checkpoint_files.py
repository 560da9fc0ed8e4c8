"""Reading PyTorch checkpoints (.pth, .pt, .bin, .safetensors) into numpy arrays."""

from __future__ import annotations

import os

import numpy as np

from efficientnet_jax.weights.errors import WeightsError
from efficientnet_jax.errors import NotFoundError

# Containers that training scripts wrap a state dict in, in order of preference.
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")


class CheckpointReadError(WeightsError, ValueError):
  """A checkpoint file cannot be read as a state dict."""


def read_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """The tensors of a PyTorch state dict file, as float32/int numpy arrays by key.

  .safetensors files are read without torch; other files need torch (the `torch` extra)
  and are loaded with weights_only=True (no code from the file runs). A state dict
  wrapped in a training checkpoint ('state_dict', 'model') and DataParallel's 'module.'
  prefixes are unwrapped.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise NotFoundError(f"Checkpoint file not found: {path}")
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file
    tensors = load_file(path)
  else:
    tensors = _read_torch(path)
  return {k.removeprefix("module."): v for k, v in tensors.items()}


def _read_torch(path: str) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError:
    raise CheckpointReadError(
        f"Reading {path} needs PyTorch: pip install 'efficientnet_jax[torch]' (or convert the "
        "checkpoint to .safetensors elsewhere, which needs no torch).") from None
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises many types here; its messages run to pages.
    raise CheckpointReadError(
        f"{path} is not a PyTorch checkpoint of plain tensors (torch.load with weights_only=True "
        f"failed: {type(e).__name__}). Convert a file saved by torch.save(model.state_dict(), ...) "
        "or a .safetensors file.") from e
  if isinstance(obj, dict):
    for key in _WRAPPER_KEYS:
      if isinstance(obj.get(key), dict):
        obj = obj[key]
        break
  if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
    raise CheckpointReadError(
        f"{path} does not hold a state dict (a mapping of names to tensors); got "
        f"{type(obj).__name__}. Save model.state_dict(), not the model object.")
  return {k: v.detach().cpu().float().numpy() if v.is_floating_point() else v.numpy()
          for k, v in obj.items()}
