r"""EfficientNet-B0 trained from scratch on grayscale Stanford Cars (the study: 81.3%).

  python -m efficientnet_jax.main --config=configs/b0_cars_scratch_gray.py \
      --workdir=runs/b0_gray --config.data.dir=/path/to/stanford_cars

The configs/cars.py recipe without pretrained weights, on 1-channel images, with weight
decay 0.1 and plateau patience 7.
"""

import ml_collections

from configs import cars


def get_config() -> ml_collections.ConfigDict:
  config = cars.get_config("b0")
  config.pretrained = ""
  config.model.in_channels = 1
  config.data.channels = 1
  config.optim.weight_decay = 0.1
  config.optim.plateau.patience = 7
  return config
