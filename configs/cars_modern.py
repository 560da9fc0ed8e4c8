r"""Stanford Cars fine-tuning with a modern recipe, for any architecture of configs/cars.py:

  python -m efficientnet_jax.main --config=configs/cars_modern.py:b0 --workdir=runs/b0_modern \
      --config.data.dir=/path/to/stanford_cars

On top of the study's recipe (configs/cars.py: the same weights, resolution and batch) it
takes what strong fine-tuning recipes since share (timm's `--aa rand-m9-mstd0.5-inc1
--mixup 0.8 --cutmix 1.0 --reprob 0.25 --smoothing 0.1`, DeiT's and the EfficientNetV2
paper's RandAugment + Mixup, cosine schedules with warmup, a weight EMA):
- input: random-resized crop (25-100% of the image) and flip, RandAugment (2 ops, magnitude
  9 with noise 0.5) instead of the study's affine, no colour jitter (as timm drops it under
  auto-augmentation), random erasing with probability 0.25; the weights' own input
  convention (ImageNet mean/std);
- batch mixing: Mixup (alpha 0.8) or CutMix (alpha 1.0), one of them per batch, with label
  smoothing 0.1;
- optimizer: AdamW lr 1e-3, weight decay 0.05 (not on BatchNorm and biases), 3 warmup
  epochs then cosine to 0 over 60 epochs, no plateau or early stopping; EMA 0.999 evaluated
  alongside; a zero-initialized head (big_vision's fine-tuning head) and the architecture's
  dropout.
The strengths (data.ra_magnitude, data.erase_prob, mixup.alpha, mixup.cutmix_alpha) are plain
fields a progressive schedule can grow. Not yet tuned or measured on Stanford Cars here: a
starting point, not a published result.
"""

import ml_collections

from configs import cars


def get_config(arch: str = "b0") -> ml_collections.ConfigDict:
  config = cars.get_config(arch)
  config.model.dropout_rate = -1.0  # The architecture's own (b0: 0.2).
  config.model.head_init = "zeros"
  config.train.input_convention = "weights"

  d = config.data
  d.train_crop = "random_resized_crop"
  d.rrc_scale = (0.25, 1.0)
  d.rotate, d.translate, d.scale, d.shear = 0.0, 0.0, (1.0, 1.0), 0.0
  d.auto_augment = "randaugment"
  d.ra_num_ops, d.ra_magnitude, d.ra_magnitude_std = 2, 9.0, 0.5
  d.erase_prob = 0.25

  config.mixup.alpha = 0.8
  config.mixup.cutmix_alpha = 1.0
  config.mixup.switch_prob = 0.5

  o = config.optim
  o.lr = 1e-3
  o.weight_decay = 0.05
  o.wd_exclude_bn_and_bias = True
  o.schedule = "warmup_cosine"
  o.warmup_epochs = 3.0
  o.ema_decay = 0.999
  o.plateau.enabled = False
  o.early_stopping.enabled = False
  config.train.num_epochs = 60
  return config
