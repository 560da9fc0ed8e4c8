"""Train / validation / test as (prepared split, record indices)."""

from __future__ import annotations

import logging

import ml_collections
import numpy as np

from efficientnet_jax.data import records
from efficientnet_jax.data.errors import DataError

SPLITS = ("train", "val", "test")
VAL_SPLITS = ("train", "test")


def stratified_holdout(labels: np.ndarray, fraction: float,
                       seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Splits record indices into (kept, held out), holding out `fraction` of each class.

  Every class with at least two examples keeps one and holds out at least one. The result
  depends only on (labels, fraction, seed); both index arrays are sorted.
  """
  if not 0.0 <= fraction < 1.0:
    raise DataError(f"config.data.val_fraction={fraction} must be in [0, 1).")
  rng = np.random.default_rng(seed)
  held = []
  for label in np.unique(labels):
    members = np.flatnonzero(labels == label)
    n = 0 if fraction == 0 or len(members) < 2 else min(len(members) - 1,
                                                        max(1, round(fraction * len(members))))
    held.append(rng.permutation(members)[:n])
  held_out = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
  kept = np.setdiff1d(np.arange(len(labels)), held_out)
  return kept.astype(np.int64), held_out.astype(np.int64)


def split_indices(config: ml_collections.ConfigDict, dataset_dir: str,
                  split: str) -> tuple[str, np.ndarray]:
  """Returns (prepared split name, record indices) of `split` in {'train', 'val', 'test'}.

  config.val_split='train' holds config.val_fraction of train out as validation (stratified,
  seeded by config.split_seed); 'test' validates on the test split, as the original study did.
  """
  if split not in SPLITS:
    raise DataError(f"Unknown split {split!r}; choose one of {SPLITS}.")
  if config.val_split not in VAL_SPLITS:
    raise DataError(f"config.data.val_split={config.val_split!r}; choose one of {VAL_SPLITS}.")
  if split == "test" or (split == "val" and config.val_split == "test"):
    if split == "val":
      logging.warning("config.data.val_split='test': validation (LR plateau, early stopping, "
                      "checkpoint selection) uses the test split, so the test score is "
                      "optimistic, as in the original study.")
    return "test", np.arange(len(records.split_labels(dataset_dir, "test")), dtype=np.int64)
  labels = records.split_labels(dataset_dir, "train")
  if config.val_split == "test":
    return "train", np.arange(len(labels), dtype=np.int64)
  kept, held_out = stratified_holdout(labels, config.val_fraction, config.split_seed)
  if split == "val" and not len(held_out):
    raise DataError("config.data.val_fraction=0 leaves no validation examples; set it > 0 "
                    "or set config.data.val_split='test'.")
  return "train", kept if split == "train" else held_out
