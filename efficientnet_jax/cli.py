"""What every command-line tool shares: a quiet start, one-line errors, --verbose.

  from efficientnet_jax import cli
  cli.quiet_start()                 # before jax / TensorFlow are imported
  ...
  cli.run(main)                     # instead of absl.app.run(main)

A UserError (a bad config value, flag, file or folder: efficientnet_jax/errors.py) prints
`Error: <message>` and exits 1; any other exception is a bug and keeps its traceback.
--verbose (or EFFICIENTNET_JAX_VERBOSE=1) shows library logs, warnings and user errors'
tracebacks too.
"""

from __future__ import annotations

import logging as logging_lib
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

from absl import app, flags, logging

from efficientnet_jax.errors import UserError

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
  """Hides the C++ start-up chatter of TensorFlow and XLA (oneDNN notices, absl's
  pre-InitializeLog line); call before importing jax or TensorFlow."""
  if not verbose():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


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


def run(main: Callable[[list[str]], Any], **kwargs: Any) -> None:
  """absl.app.run(main) with quiet logs and one-line user errors."""
  app.run(user_errors(main), **kwargs)
