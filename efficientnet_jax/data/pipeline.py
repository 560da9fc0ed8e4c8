"""Grain input pipelines: endless shuffled training batches, exact-once evaluation batches.

All functions take config.data (see efficientnet_jax/config.py). Batches are per process:
`global_batch_size // process_count` examples, as numpy arrays.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

import grain
from absl import flags
import ml_collections
import numpy as np

from efficientnet_jax.data import splits, storage, transforms
from efficientnet_jax.data.errors import DataError
from efficientnet_jax.data.preparation import ensure_prepared, stored_as
from efficientnet_jax.data.records import PreparedSource


def _process_count(process_count: int | None) -> int:
  if process_count is None:
    import jax  # pylint: disable=g-import-not-at-top

    return jax.process_count()
  return process_count


def _processes(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  process_count = _process_count(process_count)
  if process_index is None:
    import jax  # pylint: disable=g-import-not-at-top

    process_index = jax.process_index()
  if not 0 <= process_index < process_count:
    raise DataError(f"process_index={process_index} must be in [0, {process_count}).")
  return process_index, process_count


def _local_batch(global_batch_size: int, process_count: int) -> int:
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise DataError(f"Global batch size {global_batch_size} must be a positive multiple of "
                    f"the process count {process_count}.")
  return global_batch_size // process_count


def _workers(config: ml_collections.ConfigDict) -> int:
  return min(os.cpu_count() or 1, 16) if config.workers < 0 else config.workers


def _to_iterator(dataset: grain.MapDataset, config: ml_collections.ConfigDict) -> grain.DatasetIterator:
  """Iterates `dataset`, whose elements are whole batches: worker process i of W prepares
  batches i, i + W, ...; read threads prepare whole batches, together at most
  `prefetch_buffer_size` per process, in progress or ready."""
  for field in ("read_threads", "prefetch_buffer_size"):
    if config[field] < 0:
      raise DataError(f"config.data.{field}={config[field]} must be >= 0.")
  workers = _workers(config)
  # Read threads inside worker processes only compete for the cores, and with 2 workers and
  # 2 threads Grain's iterator was seen to hang under load: workers get none.
  iterable = dataset.to_iter_dataset(grain.ReadOptions(
      num_threads=0 if workers else config.read_threads,
      prefetch_buffer_size=config.prefetch_buffer_size))
  if workers:
    if not flags.FLAGS.is_parsed():  # Grain's workers read absl flags (e.g. under pytest).
      flags.FLAGS.mark_as_parsed()
    iterable = iterable.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=workers, per_worker_buffer_size=config.worker_buffer_size))
  return iter(iterable)


def _options(config: ml_collections.ConfigDict, dataset_dir: str) -> transforms.Options:
  """The transform options of config, checked against the pixels the prepared data holds."""
  options = transforms.Options.from_config(config)
  if warning := storage.check_resolution(options, stored_as(dataset_dir), dataset_dir):
    _warn_once(warning)
  return options


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
  logging.warning(message)


def num_examples(config: ml_collections.ConfigDict, split: str) -> int:
  """Number of examples of `split` in {'train', 'val', 'test'}."""
  return len(splits.split_indices(config, ensure_prepared(config), split)[1])


def steps_per_epoch(config: ml_collections.ConfigDict, global_batch_size: int) -> int:
  """Training steps per epoch (the remainder of each shuffled epoch is dropped)."""
  steps = num_examples(config, "train") // global_batch_size
  if not steps:
    raise DataError(f"The train split has fewer examples than one global batch "
                    f"({global_batch_size}); lower the batch size.")
  return steps


def train_iterator(config: ml_collections.ConfigDict, *, global_batch_size: int, seed: int,
                   process_index: int | None = None, process_count: int | None = None,
                   start_batch: int = 0) -> grain.DatasetIterator:
  """Endless training batches {'image': uint8 [B, S, S, C], 'label': int32 [B]}.

  Each epoch is a fresh seeded shuffle of the whole train split, cut to a multiple of the
  global batch; process i takes positions i, i + P, ... of it, so processes never overlap
  and all run `steps_per_epoch` steps per epoch. Augmentation is seeded per record, so
  batches do not depend on the number of workers. start_batch: the first batch yielded is
  batch `start_batch` of this sequence (the step a progressive-learning stage starts at).
  Checkpoint with `get_state()` / `set_state()` (or grain.checkpoint.CheckpointSave/Restore).
  """
  process_index, process_count = _processes(process_index, process_count)
  local_batch = _local_batch(global_batch_size, process_count)
  dataset_dir = ensure_prepared(config)
  split, indices = splits.split_indices(config, dataset_dir, "train")
  per_epoch = steps_per_epoch(config, global_batch_size) * global_batch_size
  transform = transforms.TrainTransform(_options(config, dataset_dir))
  dataset = (grain.MapDataset.source(PreparedSource(dataset_dir, split, indices))
             .shuffle(seed=seed % 2**32)[:per_epoch]
             .random_map(transform, seed=(seed + 1) % 2**32)[process_index::process_count]
             .repeat()
             .batch(local_batch, drop_remainder=True))
  if start_batch:
    dataset = dataset[start_batch:]
  return _to_iterator(dataset, config)


class _PaddedEval(grain.transforms.Map):
  """Position -> transformed record, or an all-zero padding element with mask False."""

  def __init__(self, source: PreparedSource, transform: transforms.EvalTransform):
    self.source = source
    self.transform = transform

  def map(self, position: int) -> dict[str, Any]:
    if position < len(self.source):
      return self.transform.map(self.source[position])
    o = self.transform.options
    return {"image": np.zeros((o.image_size, o.image_size, o.channels), np.uint8),
            "label": np.int32(0), "mask": np.bool_(False)}


def eval_steps(config: ml_collections.ConfigDict, split: str, global_batch_size: int,
               process_count: int | None = None) -> int:
  """Number of batches `eval_iterator` yields (the same on every process)."""
  process_count = _process_count(process_count)
  local_batch = _local_batch(global_batch_size, process_count)
  per_process = -(-num_examples(config, split) // process_count)
  return -(-per_process // local_batch)


def eval_iterator(config: ml_collections.ConfigDict, split: str, *, global_batch_size: int,
                  process_index: int | None = None,
                  process_count: int | None = None) -> grain.DatasetIterator:
  """One pass over `split` ('val' or 'test'): {'image', 'label', 'mask': bool [B]}.

  Every example appears exactly once over all processes (process i takes examples i, i + P,
  ...); every process yields `eval_steps` batches, the last ones padded with mask False.
  """
  process_index, process_count = _processes(process_index, process_count)
  dataset_dir = ensure_prepared(config)
  source_split, indices = splits.split_indices(config, dataset_dir, split)
  source = PreparedSource(dataset_dir, source_split, indices[process_index::process_count])
  steps = eval_steps(config, split, global_batch_size, process_count)
  local_batch = global_batch_size // process_count
  transform = transforms.EvalTransform(_options(config, dataset_dir))
  dataset = (grain.MapDataset.range(steps * local_batch)
             .map(_PaddedEval(source, transform))
             .batch(local_batch))
  return _to_iterator(dataset, config)


def normalization(config: ml_collections.ConfigDict) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """(mean, std), C values each for the configured channels: x = (pixels/255 - mean) / std."""
  mean, std = ((config.mean, config.std) if config.channels == 3
               else (config.gray_mean, config.gray_std))
  mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
  if len(mean) != config.channels or len(std) != config.channels:
    raise DataError(f"config.data mean/std {list(mean)}/{list(std)} need "
                    f"{config.channels} value(s) for channels={config.channels}.")
  return mean, std
