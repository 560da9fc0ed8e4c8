"""What the inference tools (predict, evaluate, export) share: a quiet start (their results
and our messages only, no JAX / TensorFlow start-up lines), one-line errors, and the flags
that name a run's checkpoint.

Nothing here imports JAX or TensorFlow: `quiet_startup` must run before they are imported.
"""

from __future__ import annotations

import contextlib
import logging as logging_lib
import os
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from absl import app, flags

if TYPE_CHECKING:
  from efficientnet_jax.run_model import TrainedModel


def quiet_startup() -> None:
  """Silences library start-up chatter; call before JAX or TensorFlow is imported."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ INFO and WARNING lines.
  os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
  # "Unable to initialize backend 'tpu'" and similar probes are INFO lines of this logger.
  logging_lib.getLogger("jax._src.xla_bridge").setLevel(logging_lib.WARNING)
  for name in ("jax2onnx", "onnx_ir"):  # Plugin import notes; the serializer's shape notes.
    logging_lib.getLogger(name).setLevel(logging_lib.ERROR)


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
  """Discards what native code writes to stderr meanwhile (e.g. TFLite's 'Created TensorFlow
  Lite XNNPACK delegate' INFO line, which no setting turns off). Python errors still raise."""
  sys.stderr.flush()
  saved = os.dup(2)
  try:
    with open(os.devnull, "w") as devnull:
      os.dup2(devnull.fileno(), 2)
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing with a one-line error naming the flag."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f"Error: {e}. See --helpshort.")


def run(main: Callable[[list[str]], int | None],
        flags_parser: Callable[[list[str]], list[str]] = parse_flags) -> None:
  """app.run(main) where a user error (bad flag, missing file, ...) exits with one line."""

  def guarded(argv: list[str]) -> int | None:
    from efficientnet_jax.weights import WeightsError  # pylint: disable=g-import-not-at-top

    _quiet_logs()
    try:
      return main(argv)
    except (ValueError, OSError, WeightsError) as e:  # Bad flags, paths, files: no traceback.
      sys.exit(f"Error: {one_line(e)}")

  app.run(guarded, flags_parser=flags_parser)


def _quiet_logs() -> None:
  """Log lines: warnings of this package, errors of libraries (e.g. Orbax's notes on the
  checkpoints it reads); the tools print their results themselves."""
  from absl import logging  # pylint: disable=g-import-not-at-top

  package = os.path.dirname(os.path.abspath(__file__))
  logging.set_verbosity(logging.WARNING)
  logging.get_absl_handler().addFilter(
      lambda r: r.levelno >= logging_lib.ERROR or r.pathname.startswith(package))


def one_line(error: BaseException) -> str:
  return " ".join(str(error).split())


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
    raise FileNotFoundError(f"--workdir={workdir}: no such directory; pass the --workdir of a "
                            "training run (python -m efficientnet_jax.main --workdir=...).")
  if not run_model.is_workdir(workdir):
    raise FileNotFoundError(f"--workdir={workdir}: no {run_model.MODEL_FILE} here: not a "
                            "training run's workdir, or its run has not started.")
  which = checkpoint_flag(checkpoint) if isinstance(checkpoint, str) else checkpoint
  try:
    return run_model.load_trained(workdir, which, ema=ema, depthwise=depthwise)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"{one_line(e)} Pick another with --checkpoint=best|latest|STEP, "
                            "or let the run finish an epoch.") from None


def checkpoint_flag(value: str) -> str | int:
  """--checkpoint as load_trained's `which`."""
  if value in ("best", "latest"):
    return value
  if value.isdigit():
    return int(value)
  raise ValueError(f"--checkpoint={value!r}: use best, latest or a step number.")
