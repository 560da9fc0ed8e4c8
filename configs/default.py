"""Default configuration: every knob of a run, documented.

Usage:
  python -m efficientnet_jax.main --config=configs/default.py --workdir=runs/x \
      --config.model.name=b0 --config.optim.lr=1e-3

Other configs import this one and override a few fields (see b0_cars.py, demo.py).
"""

import ml_collections


def _model() -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.name = "b0"  # b0…b7 or lite0…lite4.
  m.num_classes = 196
  m.in_channels = 3  # 1 = grayscale runs.
  m.padding = "same"  # "same" (TF-style, for TF-ported weights) or "symmetric".
  m.dropout_rate = -1.0  # < 0: the variant's default (0.2…0.5).
  m.drop_connect_rate = 0.2
  m.bn_momentum = 0.99
  m.bn_epsilon = 1e-3
  m.dtype = "float32"  # Compute dtype: float32 or bfloat16 (params and BN stay float32).
  m.depthwise = "auto"  # Depthwise conv: auto (per backend), conv (XLA grouped), shifted.
  m.freeze_bn = False  # Keep BatchNorm statistics frozen while training.
  m.pretrained = ""  # Converted weights file, raw checkpoint or known name ("" = scratch).
  return m


def _data() -> ml_collections.ConfigDict:
  d = ml_collections.ConfigDict()
  # Filled in by the data pipeline (issue 4).
  return d


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = _model()
  config.data = _data()
  return config
