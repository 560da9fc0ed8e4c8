r"""Train EfficientNet on Stanford Cars.

  python -m efficientnet_jax.main --config=configs/b0_cars.py --workdir=runs/b0 \
      --config.data.dir=~/data/stanford_cars

Rerunning with the same --workdir resumes from its latest checkpoint. Several processes
(hosts) join one run under SLURM `srun`, Open MPI `mpirun`, a Kubernetes Indexed Job, or
with explicit --coordinator_address --num_processes --process_id (see launch/).
"""

import sys

from efficientnet_jax import hugepages

if __name__ == "__main__":
  hugepages.reexec_with_huge_pages()  # Before the imports below start threads.

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from efficientnet_jax import parallel, progress, train  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training configuration file (see configs/).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard "
                               "events and results.json.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT of process 0 in a multi-process run.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0-based.")
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a one-line error for a misspelled --config.<field>."""
  try:
    return flags.FLAGS(argv)
  except AttributeError as e:  # ml_collections' unknown-field error, raised mid-parse.
    detail = e.args[0].args[0] if e.args and isinstance(e.args[0], KeyError) else str(e)
    overrides = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
    sys.exit(f"Unknown config field {detail.splitlines()[0]} in {' '.join(overrides)}. "
             + " ".join(detail.splitlines()[1:])
             + " efficientnet_jax/config.py documents every field.")
  except flags.Error as e:
    sys.exit(f"{e}\nPass --helpshort or --helpfull to see help on flags.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  progress.quiet_library_logs()
  parallel.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if not parallel.is_main_process():
    logging.set_verbosity(logging.WARNING)  # Process 0 reports for all.
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
