r"""Prepare a local Stanford Cars copy (any layout) as TFDS ArrayRecord, once.

  python -m efficientnet_jax.prepare --dir=~/data/stanford_cars --tfds_dir=data/tfds

Training prepares automatically when config.data.tfds_dir holds no prepared data; this
command does the same ahead of time (e.g. once, on a shared file system). The flags are
named after the config fields they stand for (data.dir, data.tfds_dir, data.bad_images).
"""

from efficientnet_jax import cli

cli.quiet_start()

from absl import flags, logging  # noqa: E402

from efficientnet_jax.data import preparation, records  # noqa: E402

_DIR = flags.DEFINE_string("dir", None, "Folder holding your Stanford Cars copy (any layout).",
                           required=True)
_TFDS_DIR = flags.DEFINE_string("tfds_dir", None, "Where to write the prepared data (a TFDS "
                                "data_dir).", required=True)
_BAD_IMAGES = flags.DEFINE_enum("bad_images", "error", ["error", "skip"],
                                "Unreadable images: fail listing them, or leave them out.")
_THREADS = flags.DEFINE_integer("threads", 0, "Threads decoding images (0 = all cores).")


def main(argv: list[str]) -> None:
  del argv
  dataset_dir = preparation.prepare(_DIR.value, _TFDS_DIR.value, bad_images=_BAD_IMAGES.value,
                                    threads=_THREADS.value)
  sizes = {s: len(records.split_labels(dataset_dir, s)) for s in ("train", "test")}
  logging.info("Prepared %s: %s examples, %d classes.", dataset_dir, sizes,
               len(records.class_names(dataset_dir)))
  print(dataset_dir)


if __name__ == "__main__":
  cli.run(main)
