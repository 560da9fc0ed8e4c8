r"""Stanford Cars fine-tuning with the original study's recipe, for any architecture at its
native resolution with its ImageNet weights:

  python -m efficientnet_jax.main --config=configs/cars.py:b3 --workdir=runs/b3 \
      --config.data.dir=/path/to/stanford_cars

The study (lukemelas EfficientNet-PyTorch under PyTorch Lightning) field by field:
- model: the official TF weights (lukemelas port), TF "same" padding, a fresh 196-class
  nn.Linear head (head_init "torch": kernel and bias U(+-1/sqrt(1280))), no dropout
  (custom_dropout_rate 0), drop-connect 0.2 linear over blocks, BatchNorm momentum 0.99
  (PyTorch 0.01) and epsilon 1e-3: lukemelas' global parameters.
- input: Resize((s, s)) bilinear, HorizontalFlip(0.5), RandomAffine(25, translate 0.1,
  scale 0.9-1.1, x-shear 8, fill 0), ColorJitter() with no arguments (a no-op: strengths 0
  here), Normalize(mean (0.470, 0.460, 0.455), std (0.267, 0.266, 0.270)); grayscale mean
  0.462, std 0.270. Evaluation: Resize((s, s)) only.
- optimizer: AdamW over all parameters, lr 1e-3, weight decay 0.01, betas (0.9, 0.999),
  eps 1e-8, batch 32, LabelSmoothingCrossEntropy(0.1), up to 150 epochs;
  ReduceLROnPlateau(factor 0.1, patience 3, threshold 1e-3) and EarlyStopping(min_delta
  1e-3, patience 10), both on validation loss after every epoch.
Deviations kept on purpose:
- validation is 10% of train, held out, and test is scored once from the best checkpoint
  (the study validated on test, so its score is optimistic; --config.data.val_split=test
  reproduces that);
- the resize, flip and affine are one warp from the source image, supersampled
  (data.train_warp): the study resized bilinearly, then warped with nearest neighbours;
  nearest from the full-size source would alias where resize-then-nearest does not.
configs/b0_cars.py is the study's own run (b0).

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
  config.model.head_init = "torch"  # The study's fresh nn.Linear(1280, 196).
  for jitter in ("brightness", "contrast", "saturation", "hue"):
    config.data[jitter] = 0.0  # ColorJitter() without arguments changes nothing.
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
