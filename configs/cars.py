r"""Stanford Cars fine-tuning with the original study's recipe, for any architecture at its
native resolution with its ImageNet weights:

  python -m efficientnet_jax.main --config=configs/cars.py:b3 --workdir=runs/b3 \
      --config.data.dir=/path/to/stanford_cars

ImageNet weights of the official TF model (lukemelas port, as in the study), AdamW lr 1e-3,
weight decay 0.01 on every parameter, batch 32, label smoothing 0.1, no dropout,
ReduceLROnPlateau(factor 0.1, patience 3, threshold 1e-3) and early stopping (patience 10,
min_delta 1e-3) on validation loss, up to 150 epochs, the study's normalization. Unlike
the study, validation is held out of train and test is scored once, from the best
checkpoint. configs/b0_cars.py is the study's own run (b0).

For b1…b7 (240…600 px): if it does not fit in memory, lower --config.train.batch_size (and
optim.lr with it), use --config.model.dtype=bfloat16 or --config.model.remat=True.
"""

import ml_collections

from efficientnet_jax.config import get_config as default_config
from efficientnet_jax.errors import ConfigError
from efficientnet_jax.models import get_arch

# The lukemelas ports of the official TF weights the study fine-tuned, by architecture.
STUDY_WEIGHTS = {f"b{i}": f"efficientnet-b{i}" for i in range(8)}


def get_config(arch: str = "b0") -> ml_collections.ConfigDict:
  """The recipe for `arch` (b0…b7) at its native resolution with its ImageNet weights."""
  if arch not in STUDY_WEIGHTS:
    raise ConfigError(f"configs/cars.py:{arch}: choose one of {', '.join(STUDY_WEIGHTS)}.")
  config = default_config()
  config.model.arch = arch
  config.pretrained = STUDY_WEIGHTS[arch]
  config.model.padding = "same"
  config.model.dropout_rate = 0.0
  config.data.image_size = get_arch(arch).resolution
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
