"""What a run writes for people to look at: TensorBoard events (scalars, images, the config),
config.json and git_revision.txt, JSON files, and the images (sample grids, confusion
matrices) written to them."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np


def create_writer(workdir: str):
  """A TensorBoard writer (event files in `workdir`) on process 0, a no-op elsewhere."""
  # clu's summary writer imports TensorFlow, which must never claim a GPU.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")
  from clu import metric_writers  # pylint: disable=g-import-not-at-top

  if jax.process_index() > 0:
    return metric_writers.MultiWriter([])
  return metric_writers.AsyncMultiWriter([metric_writers.SummaryWriter(workdir)])


def git_revision() -> str:
  """The source tree's commit (suffixed '-dirty' with local changes), or 'unknown'."""
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                         text=True, check=True, timeout=10).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                           capture_output=True, text=True, check=True, timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return "unknown"
  return rev + ("-dirty" if dirty else "")


def write_run_info(workdir: str, config: ml_collections.ConfigDict, writer) -> None:
  """Saves config.json and git_revision.txt in the workdir; hparams + config to TensorBoard."""
  if jax.process_index() > 0:
    return
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  revision = git_revision()
  with open(os.path.join(workdir, "git_revision.txt"), "w") as f:
    f.write(revision + "\n")
  writer.write_hparams(flatten(config.to_dict()))
  writer.write_texts(0, {"config": f"```\n{config}\n```", "git_revision": revision})


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1}; non-scalar values as strings (for hparams)."""
  out: dict[str, Any] = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(flatten(value, name + "."))
    else:
      out[name] = value if isinstance(value, (bool, int, float, str)) else str(value)
  return out


def write_json(path: str, obj: Any) -> None:
  """Writes JSON atomically (temp file + rename) from process 0."""
  if jax.process_index() > 0:
    return
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2)
  os.replace(tmp, path)


def image_grid(images: np.ndarray, columns: int = 8) -> np.ndarray:
  """uint8 [N, H, W, C] -> one uint8 [rows*H, columns*W, C] mosaic (2 px gaps)."""
  n, h, w, c = images.shape
  columns = min(columns, n)
  rows = -(-n // columns)
  gap = 2
  grid = np.zeros((rows * (h + gap) - gap, columns * (w + gap) - gap, c), np.uint8)
  for i, image in enumerate(images):
    r, col = divmod(i, columns)
    grid[r * (h + gap):r * (h + gap) + h, col * (w + gap):col * (w + gap) + w] = image
  return grid


def confusion_image(counts: np.ndarray, cell: int | None = None) -> np.ndarray:
  """Row-normalized confusion matrix as an RGB heat map (white 0 -> dark blue 1).

  Rows are true classes, columns predictions; each cell is `cell` pixels wide
  (default: about 512 px in total).
  """
  counts = np.asarray(counts, np.float64)
  rows = counts.sum(axis=1, keepdims=True)
  frac = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
  cell = cell or max(1, 512 // len(counts))
  frac = np.kron(frac, np.ones((cell, cell)))
  white, blue = np.array([255.0, 255.0, 255.0]), np.array([8.0, 48.0, 107.0])
  return (white + frac[..., None] * (blue - white)).round().astype(np.uint8)
