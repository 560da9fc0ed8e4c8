"""Stanford Cars: every on-disk layout, TFDS ArrayRecord preparation, Grain pipelines.

  dataset_dir = ensure_prepared(config.data)       # detect + prepare once, if missing
  names = class_names(dataset_dir)                 # in label order
  it = train_iterator(config.data, global_batch_size=..., seed=...)  # endless, resumable
  for batch in eval_iterator(config.data, "val", global_batch_size=...): ...  # exact once
  mean, std = normalization(config.data)           # applied on device
"""

from efficientnet_jax.data.errors import DataError
from efficientnet_jax.data.pipeline import (
    eval_iterator,
    eval_steps,
    normalization,
    num_examples,
    steps_per_epoch,
    train_iterator,
)
from efficientnet_jax.data.preparation import ensure_prepared, prepare
from efficientnet_jax.data.records import class_names
from efficientnet_jax.data.synthetic import make_synthetic_cars

__all__ = [
    "DataError",
    "class_names",
    "ensure_prepared",
    "eval_iterator",
    "eval_steps",
    "make_synthetic_cars",
    "normalization",
    "num_examples",
    "prepare",
    "steps_per_epoch",
    "train_iterator",
]
