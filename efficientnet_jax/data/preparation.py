"""Prepare a raw copy into TFDS ArrayRecord once, and find prepared data of a storage."""

from __future__ import annotations

import functools
import logging
import os

import ml_collections

from efficientnet_jax.data import layouts
from efficientnet_jax.data.errors import DataError
from efficientnet_jax.data.storage import Storage


def hide_gpus_from_tensorflow() -> None:
  """TensorFlow (used by TFDS preparation only) must never take a GPU from JAX."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  tf.config.set_visible_devices([], "GPU")


def prepare(raw_dir: str, tfds_dir: str, *, bad_images: str = "error", threads: int = 0,
            storage: Storage = Storage()) -> str:
  """Detects the layout under `raw_dir` and writes ArrayRecord splits under `tfds_dir`.

  Returns the prepared dataset folder (`<tfds_dir>/stanford_cars/<storage.name>/<version>`).
  A copy that is already a prepared TFDS dataset (layout 5) is returned as it is if it holds
  `storage` (else the error says what it holds).
  """
  detected = layouts.detect(raw_dir)
  logging.info("Found Stanford Cars layout %r at %s", detected.layout, detected.root)
  if detected.layout == "tfds":
    variants = layouts.find_tfds_datasets(layouts.dataset_folder(detected.root))
    found = _holding(variants, storage)
    if found is None:
      raise DataError(f"{raw_dir} is prepared data holding {_listing(variants)}, not the "
                      f"{storage.describe()} config.data.storage asks for: set "
                      "--config.data.storage (and storage_size, storage_quality) to match, or "
                      "point --config.data.dir at the raw copy to prepare them.")
    return check_random_access(found)
  raw = layouts.read(detected)
  hide_gpus_from_tensorflow()
  from efficientnet_jax.data import builder as builder_lib  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  tfds.disable_progress_bar()  # Its bars count records; ours (verification) counts images.
  with builder_lib.quiet_tfds_lookups():
    builder = builder_lib.StanfordCars(raw=raw, storage=storage, bad_images=bad_images,
                                       threads=threads, data_dir=tfds_dir,
                                       file_format="array_record")
    prepared = builder.is_prepared()
  if not prepared:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=raw.root))
    if storage.kind == "decoded":
      builder_lib.store_uncompressed(str(builder.data_dir))
  return str(builder.data_dir)


@functools.lru_cache(maxsize=32)
def stored_as(dataset_dir: str) -> Storage:
  """The storage a prepared dataset holds, from its TFDS metadata."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  return Storage.from_metadata(tfds.builder_from_directory(dataset_dir).info.metadata)


def _holding(dataset_dirs: list[str], storage: Storage) -> str | None:
  return next((d for d in dataset_dirs if stored_as(d) == storage), None)


def _listing(dataset_dirs: list[str]) -> str:
  return "; ".join(f"{stored_as(d).describe()} ({d})" for d in dataset_dirs)


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

  Uses the copy in config.tfds_dir (stanford_cars, then cars196) that holds the storage
  config asks for (config.storage, storage_size, storage_quality); other storages there are
  left alone. Otherwise prepares config.dir into config.tfds_dir with that storage.
  """
  storage = Storage.from_config(config)
  present = (layouts.find_tfds_datasets(config.tfds_dir) if os.path.isdir(config.tfds_dir)
             else [])
  if found := _holding(present, storage):
    return check_random_access(found)
  if not config.dir:
    held = f" (it holds {_listing(present)})" if present else ""
    raise DataError(f"No {storage.describe()} prepared in config.data.tfds_dir="
                    f"{config.tfds_dir!r}{held} and config.data.dir is empty: set "
                    "--config.data.dir to your Stanford Cars copy, or config.data.storage to "
                    "what is prepared.")
  logging.info("No %s prepared in %s; preparing from %s", storage.describe(), config.tfds_dir,
               config.dir)
  return prepare(config.dir, config.tfds_dir, bad_images=config.bad_images,
                 threads=config.prepare_threads, storage=storage)
