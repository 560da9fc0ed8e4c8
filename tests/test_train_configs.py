"""Every shipped config loads through the --config flag and is self-consistent."""

import glob
import os

import pytest
from absl import flags
from ml_collections import config_flags

from efficientnet_jax import config_checks
from efficientnet_jax.models import specs
from efficientnet_jax.weights.known import KNOWN_WEIGHTS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))


def load_config(path: str, *overrides: str):
  """Parses --config=path and --config.* overrides as main.py does."""
  argv = ["prog", f"--config={path}", *overrides]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, lock_config=True,
                                  sys_argv=argv)
  flag_values(argv)
  return flag_values.config


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_loads_and_is_consistent(path):
  config = load_config(path)
  assert config.model.arch in specs.ARCHS
  assert config.model.in_channels == config.data.channels
  assert config.train.batch_size > 0 and config.eval.batch_size > 0
  assert 0 < config.optim.plateau.factor < 1
  assert config_checks.problems(config) == []


def test_cars_config_uses_each_architectures_resolution_and_weights():
  for i in range(8):
    config = load_config(os.path.join(ROOT, "configs", "cars.py") + f":b{i}")
    assert config.model.arch == f"b{i}"
    assert config.data.image_size == specs.ARCHS[f"b{i}"].resolution
    assert config.pretrained == f"efficientnet-b{i}"
  assert load_config(os.path.join(ROOT, "configs", "b0_cars.py")) == load_config(
      os.path.join(ROOT, "configs", "cars.py"))
  with pytest.raises(Exception, match="cars.py:b9"):
    load_config(os.path.join(ROOT, "configs", "cars.py") + ":b9")


@pytest.mark.parametrize("arch", [a for a in specs.ARCHS if a.startswith("v2_")])
def test_cars_config_gives_efficientnetv2_its_weights_and_the_transfer_recipe(arch):
  c = load_config(os.path.join(ROOT, "configs", "cars.py") + f":{arch}")
  weights = KNOWN_WEIGHTS[c.pretrained]
  assert (c.model.arch, weights.arch, c.model.padding) == (arch, arch, "same")
  assert c.data.image_size == specs.ARCHS[arch].resolution
  # ImageNet-21k fine-tuned on 1k where published, else ImageNet-1k.
  assert c.pretrained.endswith(".in21k_ft_in1k") == (arch not in ("v2_b0", "v2_b1", "v2_b2"))
  # The weights' normalization: [-1, 1] for 21k-trained weights, ImageNet's for B0-B2.
  assert tuple(c.data.mean) == ((0.485, 0.456, 0.406) if arch in ("v2_b0", "v2_b1", "v2_b2")
                                else (0.5, 0.5, 0.5))
  assert c.train.input_convention == "config" and (c.data.eval_resize, c.data.crop_pct) == ("square", 1.0)
  # ~10,000 steps of batch 512 (14 per epoch), lr 1e-3 cosine after 1 warmup epoch, no decay.
  assert c.train.batch_size == 512 and abs(c.train.num_epochs * 14 - 10_000) < 14
  assert (c.optim.lr, c.optim.schedule, c.optim.warmup_epochs, c.optim.weight_decay) == (
      1e-3, "warmup_cosine", 1.0, 0.0)
  assert (c.optim.label_smoothing, c.optim.ema_decay, c.model.dropout_rate) == (0.1, 0.9996, 0.0)
  assert not c.optim.plateau.enabled and not c.optim.early_stopping.enabled
  assert c.data.rotate == c.data.shear == c.data.brightness == 0.0 and c.data.hflip == 0.5


def test_b0_cars_is_the_study_recipe():
  c = load_config(os.path.join(ROOT, "configs", "b0_cars.py"))
  assert (c.optim.lr, c.optim.weight_decay, c.train.batch_size, c.optim.label_smoothing) == (1e-3, 0.01, 32, 0.1)
  assert (c.optim.plateau.factor, c.optim.plateau.patience, c.optim.plateau.threshold) == (0.1, 3, 1e-3)
  assert (c.optim.early_stopping.patience, c.optim.early_stopping.min_delta) == (10, 1e-3)
  assert c.train.num_epochs == 150 and c.model.dropout_rate == 0.0
  assert (c.optim.b1, c.optim.b2, c.optim.eps, c.optim.wd_exclude_bn_and_bias) == (0.9, 0.999, 1e-8, False)
  # lukemelas' model: a fresh nn.Linear head, its BatchNorm and drop-connect settings.
  assert c.pretrained == "efficientnet-b0" and c.model.head_init == "torch"
  assert (c.model.bn_momentum, c.model.bn_epsilon, c.model.drop_connect_rate) == (0.99, 1e-3, 0.2)
  # Resize((224, 224)), flip, RandomAffine(25, (0.1, 0.1), (0.9, 1.1), 8), ColorJitter().
  d = c.data
  assert (d.image_size, d.train_crop, d.eval_resize, d.crop_pct, d.interpolation) == (
      224, "resize", "square", 1.0, "bilinear")
  assert (d.hflip, d.rotate, d.translate, tuple(d.scale), d.shear, d.fill) == (
      0.5, 25.0, 0.1, (0.9, 1.1), 8.0, 0)
  assert (d.brightness, d.contrast, d.saturation, d.hue) == (0, 0, 0, 0)
  assert d.auto_augment == "none" and d.erase_prob == 0 and c.mixup.alpha == c.mixup.cutmix_alpha == 0
  assert c.train.input_convention == "config"
  assert tuple(d.mean) == (0.470, 0.460, 0.455) and tuple(d.std) == (0.267, 0.266, 0.270)
  gray = load_config(os.path.join(ROOT, "configs", "b0_cars_scratch_gray.py"))
  assert gray.pretrained == "" and gray.model.in_channels == gray.data.channels == 1
  assert gray.optim.weight_decay == 0.1 and gray.optim.plateau.patience == 7
  assert gray.model.dropout_rate == 0.0 and gray.model.head_init == "torch"
  assert tuple(gray.data.gray_mean) == (0.462,) and tuple(gray.data.gray_std) == (0.270,)


def test_command_line_overrides_apply():
  config = load_config(os.path.join(ROOT, "configs", "b0_cars.py"), "--config.optim.lr=0.003",
                 "--config.data.dir=/data/cars")
  assert config.optim.lr == 0.003 and config.data.dir == "/data/cars"
