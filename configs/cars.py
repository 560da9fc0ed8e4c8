r"""Stanford Cars fine-tuning for any architecture at its native resolution with its ImageNet
weights: the original study's recipe for b0…b7, EfficientNetV2's transfer recipe for V2.

  python -m efficientnet_jax.main --config=configs/cars.py:b3 --workdir=runs/b3 \
      --config.data.dir=/path/to/stanford_cars
  python -m efficientnet_jax.main --config=configs/cars.py:v2_s --workdir=runs/v2_s ...

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

v2_b0…v2_xl, EfficientNetV2's transfer recipe (Tan & Le 2021, transfer experiments; the
released code's CarsFt config, google/automl efficientnetv2/datasets.py): a fixed 10,000
steps at batch 512, learning rate 1e-3 (the code's 5e-4 x 512 / 256) after the code's
1-epoch warmup, decayed by a cosine (the paper; the code keeps it constant), no weight
decay (the paper; the code's L2 is 1e-5), label smoothing 0.1, dropout 0 (the code's 1e-6),
drop-connect 0.2, weight EMA 0.9996, BatchNorm momentum 0.9; training images resized whole
to the evaluation size and flipped (no crop, affine warp or colour jitter), evaluated
resized whole (no crop), normalized as the weights were trained. No plateau or early
stopping: 714 epochs are ~10,000 steps (~7,330 training images after the 10% validation
hold-out make 14 steps of 512 per epoch); validation every 10 epochs. Weights: timm's ports of
the official ones, ImageNet-21k fine-tuned on 1k where published (B3, S, M, L, XL), else
ImageNet-1k (B0-B2); the paper's Cars results (S 93.8%, M 94.6%, L 95.1%) fine-tuned the
ImageNet-1k weights: --config.pretrained=tf_efficientnetv2_s (_m, _l) reproduces that.
Deviations, for lack of the option here: AdamW instead of RMSProp (decay 0.9, momentum 0.9,
epsilon 1e-3), and no cutout (each training image gets a random square of half its side
filled with uniform noise). The released fine-tuning turns RandAugment and Mixup off
(augmentation 'ft', mixup and cutmix alpha 0): data fields for those stay off here.

For b1…b7 and V2 (240…600 px): if it does not fit in memory, lower --config.train.batch_size
(and optim.lr with it), use --config.model.dtype=bfloat16 or --config.model.remat=True.
"""
import ml_collections

from efficientnet_jax.config import get_config as default_config
from efficientnet_jax.errors import ConfigError
from efficientnet_jax.models import get_arch
from efficientnet_jax.weights.convention import default_convention, pretraining
from efficientnet_jax.weights.known import KNOWN_WEIGHTS

# The lukemelas ports of the official TF weights the study fine-tuned, by architecture.
STUDY_WEIGHTS = {f"b{i}": f"efficientnet-b{i}" for i in range(8)}
# EfficientNetV2: ImageNet-21k fine-tuned on ImageNet-1k where published, else ImageNet-1k.
V2_WEIGHTS = {
    "v2_b0": "tf_efficientnetv2_b0", "v2_b1": "tf_efficientnetv2_b1", "v2_b2": "tf_efficientnetv2_b2",
    **{f"v2_{s}": f"tf_efficientnetv2_{s}.in21k_ft_in1k" for s in ("b3", "s", "m", "l", "xl")},
}
V2_STEPS = 10_000
V2_STEPS_PER_EPOCH = 14  # ~7,330 held-in training images // batch 512.
V2_EPOCHS = round(V2_STEPS / V2_STEPS_PER_EPOCH)


def get_config(arch: str = "b0") -> ml_collections.ConfigDict:
  """The recipe for `arch` (b0…b7, v2_b0…v2_xl) at its native resolution with its weights."""
  if arch in STUDY_WEIGHTS:
    return _study_recipe(arch)
  if arch in V2_WEIGHTS:
    return _v2_transfer_recipe(arch)
  raise ConfigError(f"configs/cars.py:{arch}: choose one of {', '.join([*STUDY_WEIGHTS, *V2_WEIGHTS])}.")


def _study_recipe(arch: str) -> ml_collections.ConfigDict:
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


def _v2_transfer_recipe(arch: str) -> ml_collections.ConfigDict:
  config = default_config()
  weights = KNOWN_WEIGHTS[V2_WEIGHTS[arch]]
  config.model.arch = arch
  config.pretrained = weights.name
  config.model.padding = "same"  # TF weights.
  config.model.dropout_rate = 0.0
  config.model.drop_connect_rate = 0.2
  config.model.bn_momentum = 0.9

  d = config.data
  d.image_size = get_arch(arch).resolution
  d.train_crop = "resize"
  d.rotate = d.translate = d.shear = 0.0
  d.scale = (1.0, 1.0)
  d.brightness = d.contrast = d.saturation = d.hue = 0.0
  d.eval_resize, d.crop_pct, d.interpolation = "square", 1.0, "bilinear"
  # The weights' normalization, with the fine-tuning's own resize and (absent) crop.
  convention = default_convention(weights.source, arch, pretraining(weights.filename, 1000))
  d.mean, d.std = convention.mean, convention.std
  config.train.input_convention = "config"

  o = config.optim
  o.lr = 1e-3
  o.weight_decay = 0.0
  o.label_smoothing = 0.1
  o.schedule = "warmup_cosine"
  o.warmup_epochs = 1.0
  o.cosine_end_lr = 0.0
  o.ema_decay = 0.9996
  o.plateau.enabled = False
  o.early_stopping.enabled = False
  config.train.batch_size = 512
  config.train.num_epochs = V2_EPOCHS
  config.train.eval_every_epochs = 10
  return config
