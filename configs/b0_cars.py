r"""EfficientNet-B0 fine-tuned on Stanford Cars: the original study's best pretrained run.

  python -m efficientnet_jax.main --config=configs/b0_cars.py --workdir=runs/b0 \
      --config.data.dir=/path/to/stanford_cars

The recipe of configs/cars.py (which runs it on every architecture, e.g.
--config=configs/cars.py:b3) for B0 at 224 px.
"""

import ml_collections

from configs import cars


def get_config() -> ml_collections.ConfigDict:
  return cars.get_config("b0")
