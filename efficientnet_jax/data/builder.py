"""TFDS builder turning a raw copy (layouts 1-4) into ArrayRecord `train`/`test` splits.

Every image is decoded once first; unreadable files fail the preparation with their names
(`bad_images='error'`) or are left out and listed (`'skip'`). Images are stored as the
`storage` asks (efficientnet_jax.data.storage), each storage as its own builder config: for
`original`, grayscale, CMYK and PNG images are re-encoded as RGB JPEG and RGB JPEGs are
stored byte for byte. Labels, boxes and file names never depend on the storage.
"""

from __future__ import annotations

import contextlib
import logging
import os

import numpy as np

import tensorflow_datasets as tfds

from efficientnet_jax.data import verify
from efficientnet_jax.data.errors import DataError
from efficientnet_jax.data.layouts import RAW_SPLITS, RawDataset
from efficientnet_jax.data.storage import Storage

NAME = "stanford_cars"


class StanfordCars(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Stanford Cars (196 classes) from a local copy; see efficientnet_jax.data.layouts."""

  name = NAME
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Images as JPEG bytes (or uint8 pixels: storage 'decoded'), "
                            "0-based label, normalized bbox, file name."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Any layout of efficientnet_jax.data.layouts; see README."

  def __init__(self, *, raw: RawDataset, storage: Storage = Storage(), bad_images: str = "error",
               threads: int = 0, **kwargs):
    if bad_images not in verify.BAD_IMAGE_POLICIES:
      raise DataError(f"config.data.bad_images={bad_images!r}; choose one of "
                      f"{verify.BAD_IMAGE_POLICIES}.")
    self._raw = raw
    self._bad_images = bad_images
    self._threads = threads
    self._storage = storage
    config = tfds.core.BuilderConfig(name=storage.name, description=storage.describe())
    super().__init__(config=config, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": (tfds.features.Tensor(shape=(None, None, 3), dtype=np.uint8,
                                           encoding=tfds.features.Encoding.BYTES)
                      if self._storage.kind == "decoded" else
                      tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg")),
            "label": tfds.features.ClassLabel(names=list(self._raw.class_names)),
            "bbox": tfds.features.BBoxFeature(),
            "file_name": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        homepage="https://ai.stanford.edu/~jkrause/cars/car_dataset.html",
        metadata=tfds.core.MetadataDict(),
    )

  def _log_download_bytes(self) -> None:
    """Instead of TFDS's "Downloading and preparing dataset Unknown size" (nothing downloads)."""
    logging.info("Preparing %s into %s", self._raw.root, self.data_dir)

  def _log_download_done(self) -> None:
    logging.info("Prepared %s", self.data_dir)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # The source was read by efficientnet_jax.data.layouts.
    checked, bad = {}, []
    for split in RAW_SPLITS:
      checked[split], bad_split = verify.check_images(
          self._raw.splits[split], self._threads, f"Verifying {split} images")
      bad += bad_split
    if bad and self._bad_images == "error":
      raise DataError(f"{self._raw.root}: {verify.describe_bad(bad)}\nRemove or replace "
                      "these files, or set config.data.bad_images='skip' (prepare "
                      "--bad_images=skip) to leave them out.")
    if bad:
      logging.warning("Skipping %s", verify.describe_bad(bad))
    self.info.metadata.update({
        "source_layout": self._raw.layout,
        "source_dir": os.path.abspath(self._raw.root),
        "skipped_images": [b.example.name for b in bad],
        **self._storage.metadata(),
    })
    return {split: self._generate_examples(checked[split]) for split in RAW_SPLITS}

  def _generate_examples(self, checked: list[verify.CheckedImage]):
    stored = verify.stored_images(checked, self._storage, self._threads)
    for c, image in zip(checked, stored):
      yield c.example.name, {
          "image": image,
          "label": c.example.label,
          "bbox": verify.normalized_bbox(c),
          "file_name": c.example.name,
      }


@contextlib.contextmanager
def quiet_tfds_lookups():
  """Hides the warnings TFDS logs while a builder looks for its data: a builder config not
  listed in BUILDER_CONFIGS (ours are made from the storage) and a config folder not
  prepared yet (the reason to prepare)."""
  tfds_logger = logging.getLogger("absl")
  level = tfds_logger.level
  tfds_logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    tfds_logger.setLevel(level)


def store_uncompressed(dataset_dir: str) -> None:
  """Rewrites the ArrayRecord shards of `dataset_dir` uncompressed, shard by shard (each
  replaced atomically; readers take either form).

  TFDS writes compressed records; decompressing ~0.3 MB of pixels cost more than decoding
  the JPEG they replace (benchmark input), while reading them uncompressed is a copy.
  """
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

  for name in sorted(os.listdir(dataset_dir)):
    if ".array_record-" not in name:
      continue
    path = os.path.join(dataset_dir, name)
    reader = array_record_module.ArrayRecordReader(path)
    temporary = path + ".uncompressed"
    writer = array_record_module.ArrayRecordWriter(temporary, "group_size:1,uncompressed")
    for start in range(0, reader.num_records(), 256):
      for record in reader.read(list(range(start, min(start + 256, reader.num_records())))):
        writer.write(record)
    writer.close()
    reader.close()
    os.replace(temporary, path)
