r"""EfficientNet-B6 fine-tuned on Stanford Cars at its native 528 px: the b0_cars.py recipe.

  python -m efficientnet_jax.main --config=configs/b6_cars.py --workdir=runs/b6 \
      --config.data.dir=/path/to/stanford_cars

If it does not fit in memory, lower --config.train.batch_size (and optim.lr with it) or
use --config.model.dtype=bfloat16.
"""

import ml_collections

from configs import b0_cars


def get_config() -> ml_collections.ConfigDict:
  return b0_cars.variant_config("b6")
