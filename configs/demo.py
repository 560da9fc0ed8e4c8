r"""A complete run in about a minute on 2 CPU cores, on a tiny synthetic Stanford-Cars-like
dataset generated on first use (4 classes, 48 px).

  python -m efficientnet_jax.main --config=configs/demo.py --workdir=/tmp/demo_run

It goes through every stage of a real run: data preparation, validation each epoch,
reduce-on-plateau, early stopping, EMA, 'latest' and 'best' checkpoints, TensorBoard,
the test evaluation of the best checkpoint and results.json. The data lives in
$XDG_CACHE_HOME/efficientnet_jax/demo (default ~/.cache/...), or in the folder named by
the EFFICIENTNET_JAX_DEMO_DATA environment variable.
"""

import os
import shutil
import tempfile

import ml_collections

from efficientnet_jax.config import get_config as default_config
from efficientnet_jax.data.synthetic import make_synthetic_cars

NUM_CLASSES = 4


def demo_data_root() -> str:
  """The synthetic copy's folder, written once (atomically) if missing."""
  cache = os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache"))
  root = os.environ.get("EFFICIENTNET_JAX_DEMO_DATA",
                        os.path.join(cache, "efficientnet_jax", "demo"))
  raw = os.path.join(root, "stanford_cars_synthetic")
  if not os.path.isdir(raw):
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=root)
    make_synthetic_cars(tmp, layout="official", num_classes=NUM_CLASSES, per_class_train=32,
                        per_class_test=10, size=(96, 72), seed=0)
    try:
      os.rename(tmp, raw)
    except OSError:  # Another process wrote it first.
      shutil.rmtree(tmp)
  return root


def get_config() -> ml_collections.ConfigDict:
  config = default_config()
  root = demo_data_root()
  config.data.dir = os.path.join(root, "stanford_cars_synthetic")
  config.data.tfds_dir = os.path.join(root, "tfds")
  config.data.val_fraction = 0.2
  config.data.image_size = 48
  config.data.workers = 0  # Decode in-process: the images are tiny and the cores are few.
  config.data.read_threads = 2

  config.model.arch = "b0"
  config.model.num_classes = NUM_CLASSES
  config.model.dropout_rate = 0.0
  config.model.bn_momentum = 0.9  # Running statistics must settle within a few dozen steps.
  config.model.head_init = "zeros"  # Logits start at 0: with 4 classes the TF init starts at ~±10.

  config.optim.lr = 5e-3
  config.optim.ema_decay = 0.9
  # Validation loss stays near ln(4) for the first epochs while the running statistics
  # settle: patience enough not to stop the run there.
  config.optim.plateau.patience = 3
  config.optim.plateau.threshold = 0.05
  config.optim.early_stopping.patience = 6
  config.optim.early_stopping.min_delta = 0.02

  config.train.num_epochs = 20
  config.train.batch_size = 16
  config.train.log_every_steps = 6

  config.checkpoint.every_steps = 20
  config.eval.batch_size = 32
  return config
