r"""Train EfficientNet on Stanford Cars.

  python -m efficientnet_jax.main --config=configs/b0_cars.py --workdir=runs/b0 \
      --config.data.dir=~/data/stanford_cars

Rerunning with the same --workdir resumes from its latest checkpoint. Several processes
(hosts) join one run under SLURM `srun`, Open MPI `mpirun`, a Kubernetes Indexed Job, or
with explicit --coordinator_address --num_processes --process_id (see launch/).
"""

import sys

from efficientnet_jax import cli, hugepages

if __name__ == "__main__":
  hugepages.reexec_with_huge_pages()  # Before the imports below start threads.
  cli.quiet_start()

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from efficientnet_jax import parallel, train  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training configuration file (see configs/), optionally :ARG "
    "(e.g. configs/cars.py:b3).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard "
                               "events and results.json.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT of process 0 in a multi-process run.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0-based.")
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with one-line errors for a misspelled --config.<field>, a config
  file that cannot be loaded and a bad flag."""
  try:
    return flags.FLAGS(argv)
  except AttributeError as e:  # ml_collections' unknown-field error, raised mid-parse.
    detail = e.args[0].args[0] if e.args and isinstance(e.args[0], KeyError) else str(e)
    overrides = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
    sys.exit(f"Error: unknown config field {detail.splitlines()[0]} in {' '.join(overrides)}. "
             + " ".join(detail.splitlines()[1:])
             + " efficientnet_jax/config.py documents every field.")
  except flags.Error as e:
    lines = [line for line in str(e).splitlines() if line.strip()]
    if "parsing config file" in lines[0]:  # The config file's get_config raised: its message.
      sys.exit(f"Error: {lines[0].split(':')[0]}: {lines[-1].split(': ', 1)[-1]}")
    sys.exit(f"Error: {e}\nPass --helpshort or --helpfull to see help on flags.")


def load_config(argv: list[str]):
  """The --config value; a config file that failed to load exits with one line."""
  try:
    return _CONFIG.value.copy_and_resolve_references()
  except OSError as e:  # ml_collections defers a missing or broken file's error to here.
    reason = str(e).strip().splitlines()[-1].strip()
    given = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    sys.exit(f"Error: cannot load --config={given[0] if given else ''}: {reason}")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  parallel.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if not parallel.is_main_process():
    logging.set_verbosity(logging.WARNING)  # Process 0 reports for all.
  train.train_and_evaluate(load_config(sys.argv), _WORKDIR.value)


if __name__ == "__main__":
  cli.run(main, flags_parser=parse_flags)
