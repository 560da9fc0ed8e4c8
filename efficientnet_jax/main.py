r"""Train EfficientNet on Stanford Cars.

  python -m efficientnet_jax.main --config=configs/b0_cars.py --workdir=runs/b0 \
      --config.data.dir=~/data/stanford_cars

Rerunning with the same --workdir resumes from its latest checkpoint.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from efficientnet_jax import metrics, train

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training configuration file (see configs/).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard "
                               "events and results.json.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  metrics.quiet_library_logs()
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
