r"""EfficientNet-B0 trained from scratch on grayscale Stanford Cars (the study: 81.3%).

  python -m efficientnet_jax.main --config=configs/b0_cars_scratch_gray.py \
      --workdir=runs/b0_gray --config.data.dir=/path/to/stanford_cars

The configs/cars.py recipe without pretrained weights, on 1-channel images (PIL's
Grayscale), with weight decay 0.1, plateau patience 7 and no dropout: the study's best
grayscale run. Deviation kept on purpose: the convolutions start from TF's He-normal init
(fan-out), the architecture's published one, where lukemelas' model kept PyTorch's default
(kaiming-uniform with a=sqrt(5)); the head is nn.Linear's, as in configs/cars.py.
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
