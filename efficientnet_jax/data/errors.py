"""Errors the data package raises; each message names the file or field and the fix."""

from efficientnet_jax.errors import UserError

WHERE_TO_GET_DATA = (
    "The official Stanford Cars URLs are dead (TFDS cars196 and torchvision cannot "
    "download it). Get a copy, e.g. the Kaggle dataset jessicali9530/stanford-cars-dataset "
    "(https://www.kaggle.com/datasets/jessicali9530/stanford-cars-dataset) plus "
    "cars_test_annos_withlabels.mat for the test labels, or a class-folder export, unpack "
    "it and point --config.data.dir (or prepare --dir) at the folder."
)


class DataError(UserError, ValueError):
  """Raised when a dataset on disk cannot be used as it is."""
