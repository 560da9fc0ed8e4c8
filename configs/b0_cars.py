r"""EfficientNet-B0 fine-tuned on Stanford Cars: the original study's best pretrained run.

  python -m efficientnet_jax.main --config=configs/b0_cars.py --workdir=runs/b0 \
      --config.data.dir=/path/to/stanford_cars

ImageNet weights of the official TF B0 (lukemelas port, as in the study), AdamW lr 1e-3,
weight decay 0.01 on every parameter, batch 32, label smoothing 0.1, no dropout,
ReduceLROnPlateau(factor 0.1, patience 3, threshold 1e-3) and early stopping (patience 10,
min_delta 1e-3) on validation loss, up to 150 epochs, the study's normalization. Unlike
the study, validation is held out of train and test is scored once, from the best
checkpoint. b1_cars.py ... b7_cars.py run the same recipe on the larger variants.
"""

import ml_collections

from configs import default
from efficientnet_jax.models.specs import get_variant


def variant_config(name: str) -> ml_collections.ConfigDict:
  """The recipe for variant `name` at its native resolution with its ImageNet weights."""
  config = default.get_config()
  config.model.name = name
  config.model.pretrained = f"efficientnet-{name}"  # Official TF weights, lukemelas port.
  config.model.padding = "same"
  config.model.dropout_rate = 0.0
  config.data.image_size = get_variant(name).resolution
  config.train.input_convention = "config"  # The study normalized with its own statistics.

  config.optim.lr = 1e-3
  config.optim.weight_decay = 0.01
  config.optim.wd_exclude_bn_and_bias = False  # torch AdamW over model.parameters().
  config.optim.label_smoothing = 0.1
  config.optim.plateau.factor = 0.1
  config.optim.plateau.patience = 3
  config.optim.plateau.threshold = 1e-3
  config.optim.early_stopping.patience = 10
  config.optim.early_stopping.min_delta = 1e-3
  config.train.num_epochs = 150
  config.train.batch_size = 32
  return config


def get_config() -> ml_collections.ConfigDict:
  return variant_config("b0")
