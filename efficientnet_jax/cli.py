"""What every command-line tool shares: a quiet start, one-line errors, --verbose, and the
flags that name a training run's checkpoint.

  from efficientnet_jax import cli
  cli.quiet_start()                 # before jax / TensorFlow are imported
  ...
  cli.run(main)                     # instead of absl.app.run(main)

A UserError (a bad config value, flag, file or folder: efficientnet_jax/errors.py) prints
`Error: <message>` and exits 1; any other exception is a bug and keeps its traceback.
--verbose (or EFFICIENTNET_JAX_VERBOSE=1) shows library logs, warnings and user errors'
tracebacks too. Nothing here imports JAX or TensorFlow.
"""

from __future__ import annotations

import contextlib
import logging as logging_lib
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from absl import app, flags, logging

from efficientnet_jax.errors import ConfigError, NotFoundError, UserError

if TYPE_CHECKING:
  from efficientnet_jax.run_model import TrainedModel

VERBOSE_ENV = "EFFICIENTNET_JAX_VERBOSE"
_VERBOSE = flags.DEFINE_boolean("verbose", False, "Show library logs and warnings, and the "
                                f"traceback of errors in your input (also ${VERBOSE_ENV}=1).")
_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def verbose() -> bool:
  """Whether --verbose (or $EFFICIENTNET_JAX_VERBOSE) asks for library logs and tracebacks."""
  if os.environ.get(VERBOSE_ENV, "") not in ("", "0"):
    return True
  return flags.FLAGS.is_parsed() and _VERBOSE.value


def quiet_start() -> None:
  """Hides the start-up chatter of TensorFlow, XLA and JAX (oneDNN notices, absl's
  pre-InitializeLog line, backend probes); call before importing jax or TensorFlow."""
  if verbose():
    return
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
  # "Unable to initialize backend 'tpu'" and similar probes are INFO lines of this logger.
  logging_lib.getLogger("jax._src.xla_bridge").setLevel(logging_lib.WARNING)
  for name in ("jax2onnx", "onnx_ir"):  # Plugin import notes; the serializer's shape notes.
    logging_lib.getLogger(name).setLevel(logging_lib.ERROR)


def quiet_library_logs() -> None:
  """Console: this package's INFO lines; of the libraries only CRITICAL ones, and no Python
  warnings (all of them with --verbose). Failures that matter reach the user as our errors."""
  logging.set_verbosity(logging.INFO)
  if verbose():
    return

  def keep(record: logging_lib.LogRecord) -> bool:
    return record.levelno >= logging_lib.CRITICAL or record.pathname.startswith(_PACKAGE)

  logging.get_absl_handler().addFilter(keep)
  for name in ("jax", "absl", "tensorflow", "orbax", "grain"):
    logging_lib.getLogger(name).addFilter(keep)
  warnings.simplefilter("ignore")
  # The Python processes multiprocessing starts (input workers, its resource tracker) take
  # their warning filters from these options: the tracker's "leaked shared_memory objects"
  # notice at exit (it then frees them) is library noise too.
  if "ignore" not in sys.warnoptions:  # Once, however often this is called.
    sys.warnoptions.append("ignore")


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
  """Discards what native code writes to stderr meanwhile (e.g. TFLite's 'Created TensorFlow
  Lite XNNPACK delegate' INFO line, which no setting turns off). Python errors still raise."""
  if verbose():
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  try:
    with open(os.devnull, "w") as devnull:
      os.dup2(devnull.fileno(), 2)
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)


def one_line(error: BaseException) -> str:
  return " ".join(str(error).split())


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing with a one-line error naming the flag."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f"Error: {one_line(e)}. See --helpshort.")


def user_errors(main: Callable[[list[str]], Any]) -> Callable[[list[str]], Any]:
  """Wraps an absl main: a UserError prints one `Error:` line and exits 1."""

  def wrapped(argv: list[str]) -> Any:
    quiet_library_logs()
    try:
      return main(argv)
    except UserError as e:
      if verbose():
        raise
      print(f"Error: {e}", file=sys.stderr)
      sys.exit(1)

  return wrapped


def run(main: Callable[[list[str]], Any],
        flags_parser: Callable[[list[str]], list[str]] = parse_flags) -> None:
  """absl.app.run(main) with quiet logs and one-line user and flag errors."""
  app.run(user_errors(main), flags_parser=flags_parser)


def define_checkpoint_flags() -> None:
  """--workdir, --checkpoint and --ema: which weights of a training run to use."""
  flags.DEFINE_string("workdir", None, "A training run's --workdir.")
  flags.DEFINE_string("checkpoint", "best", "best (highest validation top-1), latest, or a "
                      "step number.")
  flags.DEFINE_boolean("ema", False, "Use the run's EMA weights.")


def load_run(workdir: str, checkpoint: str | int = "best", *, ema: bool = False,
             depthwise: str | None = None) -> TrainedModel:
  """run_model.load_trained, with one-line errors naming the flag to fix."""
  from efficientnet_jax import run_model  # pylint: disable=g-import-not-at-top

  if not os.path.isdir(workdir):
    raise NotFoundError(f"--workdir={workdir}: no such directory; pass the --workdir of a "
                        "training run (python -m efficientnet_jax.main --workdir=...).")
  if not run_model.is_workdir(workdir):
    raise NotFoundError(f"--workdir={workdir}: no {run_model.MODEL_FILE} here: not a "
                        "training run's workdir, or its run has not started.")
  which = checkpoint_flag(checkpoint) if isinstance(checkpoint, str) else checkpoint
  try:
    return run_model.load_trained(workdir, which, ema=ema, depthwise=depthwise)
  except FileNotFoundError as e:
    raise NotFoundError(f"{one_line(e)} Pick another with --checkpoint=best|latest|STEP, "
                        "or let the run finish an epoch.") from None


def checkpoint_flag(value: str) -> str | int:
  """--checkpoint as load_trained's `which`."""
  if value in ("best", "latest"):
    return value
  if value.isdigit():
    return int(value)
  raise ConfigError(f"--checkpoint={value!r}: use best, latest or a step number.")
