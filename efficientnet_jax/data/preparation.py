"""Prepare a raw copy into TFDS ArrayRecord once, and find prepared data."""

from __future__ import annotations

import logging
import os

import ml_collections

from efficientnet_jax.data import layouts
from efficientnet_jax.data.errors import DataError


def hide_gpus_from_tensorflow() -> None:
  """TensorFlow (used by TFDS preparation only) must never take a GPU from JAX."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  tf.config.set_visible_devices([], "GPU")


def prepare(raw_dir: str, tfds_dir: str, *, bad_images: str = "error",
            threads: int = 0) -> str:
  """Detects the layout under `raw_dir` and writes ArrayRecord splits under `tfds_dir`.

  Returns the prepared dataset folder (`<tfds_dir>/stanford_cars/<version>`). A copy that
  is already a prepared TFDS dataset (layout 5) is returned as it is.
  """
  detected = layouts.detect(raw_dir)
  logging.info("Found Stanford Cars layout %r at %s", detected.layout, detected.root)
  if detected.layout == "tfds":
    return check_random_access(detected.root)
  raw = layouts.read(detected)
  hide_gpus_from_tensorflow()
  from efficientnet_jax.data.builder import StanfordCars  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  tfds.disable_progress_bar()  # Its bars count records; ours (verification) counts images.
  builder = StanfordCars(raw=raw, bad_images=bad_images, threads=threads,
                         data_dir=tfds_dir, file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=raw.root))
  return str(builder.data_dir)


def check_random_access(dataset_dir: str) -> str:
  """Returns `dataset_dir` if it holds array_record files (random access), else explains."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  info = tfds.builder_from_directory(dataset_dir).info
  formats = {f.value for f in info.available_file_formats()} or {info.file_format.value}
  if "array_record" not in formats:
    raise DataError(
        f"{dataset_dir}: the TFDS dataset is stored as {sorted(formats)}, but training reads "
        "array_record (random access). Convert it: `tfds convert_format "
        f"--dataset_version_dir={dataset_dir} --out_file_format=array_record`, or prepare "
        "from the raw images instead.")
  missing = [s for s in layouts.RAW_SPLITS if s not in info.splits]
  if missing:
    raise DataError(f"{dataset_dir}: the TFDS dataset lacks the split(s) {missing}.")
  return dataset_dir


def ensure_prepared(config: ml_collections.ConfigDict) -> str:
  """Returns the prepared dataset folder for `config` (= config.data), preparing if needed.

  Looks for prepared data in config.tfds_dir (stanford_cars, then cars196); otherwise
  detects the copy under config.dir and prepares it into config.tfds_dir.
  """
  prepared = layouts.find_tfds_dataset(config.tfds_dir) if os.path.isdir(config.tfds_dir) else None
  if prepared:
    return check_random_access(prepared)
  if not config.dir:
    raise DataError(f"No prepared data in config.data.tfds_dir={config.tfds_dir!r} and "
                    "config.data.dir is empty: set --config.data.dir to your Stanford Cars copy.")
  logging.info("No prepared data in %s; preparing from %s", config.tfds_dir, config.dir)
  return prepare(config.dir, config.tfds_dir, bad_images=config.bad_images,
                 threads=config.prepare_threads)
