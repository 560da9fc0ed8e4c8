r"""Prepare a local Stanford Cars copy (any layout) as TFDS ArrayRecord, once.

  python -m efficientnet_jax.prepare --dir=~/data/stanford_cars --tfds_dir=data/tfds \
      [--storage=decoded --storage_size=0 --image_size=224]

Training prepares automatically when config.data.tfds_dir holds no prepared data of its
storage; this command does the same ahead of time (e.g. once, on a shared file system).
The flags are named after the config fields they stand for (data.dir, data.tfds_dir,
data.bad_images, data.storage, data.storage_size, data.storage_quality, data.image_size:
storage_size=0 stores ceil(1.15 x image_size)).
"""

from efficientnet_jax import cli

cli.quiet_start()

from absl import flags, logging  # noqa: E402

from efficientnet_jax.config import get_config  # noqa: E402
from efficientnet_jax.data import preparation, records  # noqa: E402
from efficientnet_jax.data.storage import KINDS, Storage  # noqa: E402

_DEFAULTS = get_config().data

_DIR = flags.DEFINE_string("dir", None, "Folder holding your Stanford Cars copy (any layout).",
                           required=True)
_TFDS_DIR = flags.DEFINE_string("tfds_dir", None, "Where to write the prepared data (a TFDS "
                                "data_dir).", required=True)
_BAD_IMAGES = flags.DEFINE_enum("bad_images", "error", ["error", "skip"],
                                "Unreadable images: fail listing them, or leave them out.")
_THREADS = flags.DEFINE_integer("threads", 0, "Threads decoding images (0 = all cores).")
_STORAGE = flags.DEFINE_enum("storage", _DEFAULTS.storage, KINDS, "How images are stored "
                             "(see efficientnet_jax/config.py).")
_STORAGE_SIZE = flags.DEFINE_integer("storage_size", _DEFAULTS.storage_size, "Stored shorter "
                                     "side in px (reduced, decoded); 0 = ceil(1.15 x "
                                     "--image_size).")
_STORAGE_QUALITY = flags.DEFINE_integer("storage_quality", _DEFAULTS.storage_quality,
                                        "JPEG quality of storage=reduced.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", _DEFAULTS.image_size, "The training "
                                   "resolution storage_size=0 covers.")


def main(argv: list[str]) -> None:
  del argv
  config = _DEFAULTS.copy_and_resolve_references()
  config.update(storage=_STORAGE.value, storage_size=_STORAGE_SIZE.value,
                storage_quality=_STORAGE_QUALITY.value, image_size=_IMAGE_SIZE.value)
  dataset_dir = preparation.prepare(_DIR.value, _TFDS_DIR.value, bad_images=_BAD_IMAGES.value,
                                    threads=_THREADS.value, storage=Storage.from_config(config))
  sizes = {s: len(records.split_labels(dataset_dir, s)) for s in ("train", "test")}
  logging.info("Prepared %s: %s examples, %d classes, %s.", dataset_dir, sizes,
               len(records.class_names(dataset_dir)),
               preparation.stored_as(dataset_dir).describe())
  print(dataset_dir)


if __name__ == "__main__":
  cli.run(main)
