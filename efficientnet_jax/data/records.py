"""Random access to a prepared split (TFDS ArrayRecord) without TensorFlow."""

from __future__ import annotations

import functools
import zlib
from typing import Any

import numpy as np

_LABEL_CHUNK = 256


class PreparedSource:
  """Records of one prepared split (optionally a subset) as a Grain random-access source.

  Records are {'image': JPEG bytes, or uint8 [H, W, 3] pixels for storage 'decoded',
  'label': int, 'bbox': float32 [ymin, xmin, ymax, xmax], 'file_name': str}. Picklable
  (the TFDS reader is reopened lazily in each worker process) with a stable repr, as
  Grain's spawned workers need.
  """

  def __init__(self, dataset_dir: str, split: str, indices: np.ndarray | None = None):
    self.dataset_dir = dataset_dir
    self.split = split
    self._reader = None
    self.indices = (np.arange(len(self._tfds_reader()), dtype=np.int64) if indices is None
                    else np.asarray(indices, np.int64))

  def _tfds_reader(self):
    if self._reader is None:
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

      builder = tfds.builder_from_directory(self.dataset_dir)
      jpeg = isinstance(builder.info.features["image"], tfds.features.Image)
      self._reader = builder.as_data_source(  # JPEGs stay bytes; pixels come as arrays.
          self.split, decoders={"image": tfds.decode.SkipDecoding()} if jpeg else None)
    return self._reader

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return _record(self._tfds_reader()[int(self.indices[index])])

  def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
    records = self._tfds_reader().__getitems__([int(self.indices[i]) for i in indices])
    return [_record(r) for r in records]

  def __repr__(self) -> str:
    digest = zlib.crc32(self.indices.tobytes())
    return (f"PreparedSource(dataset_dir={self.dataset_dir!r}, split={self.split!r}, "
            f"records={len(self)}, indices_crc32={digest:08x})")

  def __getstate__(self) -> dict[str, Any]:
    return {**self.__dict__, "_reader": None}


def _record(raw: dict[str, Any]) -> dict[str, Any]:
  name = raw.get("file_name", raw.get("id", b""))  # cars196 names it `id`.
  return {
      "image": raw["image"],
      "label": int(raw["label"]),
      "bbox": np.asarray(raw["bbox"], np.float32),
      "file_name": name.decode() if isinstance(name, bytes) else str(name),
  }


@functools.lru_cache(maxsize=8)
def split_labels(dataset_dir: str, split: str) -> np.ndarray:
  """All labels of a split, in record order (reads the split once; cached)."""
  reader = PreparedSource(dataset_dir, split)._tfds_reader()
  labels = []
  for start in range(0, len(reader), _LABEL_CHUNK):
    chunk = list(range(start, min(start + _LABEL_CHUNK, len(reader))))
    labels += [int(r["label"]) for r in reader.__getitems__(chunk)]
  return np.asarray(labels, np.int32)


@functools.lru_cache(maxsize=8)
def class_names(dataset_dir: str) -> tuple[str, ...]:
  """Class names in label order, from the prepared dataset's metadata."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  return tuple(tfds.builder_from_directory(dataset_dir).info.features["label"].names)
