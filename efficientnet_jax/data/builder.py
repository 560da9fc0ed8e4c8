"""TFDS builder turning a raw copy (layouts 1-4) into ArrayRecord `train`/`test` splits.

Every image is decoded once first; unreadable files fail the preparation with their names
(`bad_images='error'`) or are left out and listed (`'skip'`). Grayscale, CMYK and PNG images
are stored re-encoded as RGB JPEG; RGB JPEGs are stored byte for byte.
"""

from __future__ import annotations

import logging
import os

import tensorflow_datasets as tfds

from efficientnet_jax.data import verify
from efficientnet_jax.data.errors import DataError
from efficientnet_jax.data.layouts import RAW_SPLITS, RawDataset

NAME = "stanford_cars"


class StanfordCars(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Stanford Cars (196 classes) from a local copy; see efficientnet_jax.data.layouts."""

  name = NAME
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Images as JPEG bytes, 0-based label, normalized bbox, file name."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Any layout of efficientnet_jax.data.layouts; see README."

  def __init__(self, *, raw: RawDataset, bad_images: str = "error", threads: int = 0,
               **kwargs):
    if bad_images not in verify.BAD_IMAGE_POLICIES:
      raise DataError(f"config.data.bad_images={bad_images!r}; choose one of "
                      f"{verify.BAD_IMAGE_POLICIES}.")
    self._raw = raw
    self._bad_images = bad_images
    self._threads = threads
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
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
    })
    return {split: self._generate_examples(checked[split]) for split in RAW_SPLITS}

  def _generate_examples(self, checked: list[verify.CheckedImage]):
    for c in checked:
      yield c.example.name, {
          "image": verify.stored_bytes(c),
          "label": c.example.label,
          "bbox": verify.normalized_bbox(c),
          "file_name": c.example.name,
      }
