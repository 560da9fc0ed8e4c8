"""Orbax checkpoints: 'latest' (resume) and 'best' (model selection) managers; preemption.

Layout under <workdir>/checkpoints/:
  latest/<step>/  state (steps.TrainState), meta (JSON: epoch, plateau, early stop, ...),
                  data (Grain iterator state, one file per process); keep N, async.
  best/<step>/    model (steps.Variables: params, BN stats, EMA), meta (JSON: epoch,
                  validation metrics); keep K by validation top-1.
Two managers, because Orbax's best_fn alone would also prune the checkpoints needed to
resume. Orbax writes each step into a temporary folder and renames it when complete, so
an interrupted save never damages the previous checkpoint; leftover temporary folders are
removed when the managers open. A failed background write surfaces at the next step
(`check_saves`). A step that cannot be read (truncated, corrupt) is moved aside as
`<step>.unreadable` with a warning, never deleted, and the next newest one is used. One run
at a time holds a workdir (`WorkdirLock`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pathlib
import signal
import socket
import threading
import time
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

from efficientnet_jax import parallel
from efficientnet_jax.errors import ConfigError, NotFoundError, UserError

BEST_METRIC = "val/top1"
LATEST, BEST = "latest", "best"
# The TrainState field that holds the weights (steps.TrainState.variables); a 'latest'
# checkpoint without it was written before the weights were grouped (steps.TrainState.legacy).
VARIABLES = "variables"


class CheckpointSaveError(UserError):
  """A checkpoint write failed (disk full, permissions); the earlier checkpoints are intact."""


class WorkdirInUseError(UserError):
  """Another run holds the workdir."""


def abstract(tree: Any) -> Any:
  """Shape/dtype/sharding placeholders of a pytree: the target of a restore."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class Checkpoints:
  """The run's 'latest' and 'best' checkpoint managers."""

  def __init__(self, workdir: str, cfg: ml_collections.ConfigDict):
    self.keep_best = cfg.keep_best
    self.latest = ocp.CheckpointManager(
        manager_dir(workdir, LATEST),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=cfg.keep_latest, enable_async_checkpointing=cfg.async_save, create=True,
            cleanup_tmp_directories=True))
    self.best = ocp.CheckpointManager(
        manager_dir(workdir, BEST),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=cfg.keep_best, best_fn=lambda m: m[BEST_METRIC], best_mode="max",
            enable_async_checkpointing=cfg.async_save, create=True, cleanup_tmp_directories=True))
    # Validation top-1 of the kept best checkpoints (Orbax's metrics of a step still
    # being written are not readable yet, so they are tracked here).
    self._best_values = sorted(self.best.metrics(s)[BEST_METRIC] for s in self.best.all_steps())

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def save_latest(self, step: int, state: Any, meta: dict[str, Any], data_iterator: Any) -> None:
    """Saves the train state, host-side meta and the data iterator position at `step`."""
    if step in self.latest.all_steps():
      return
    with _writing(self.latest):
      self.latest.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta),
          data=grain.checkpoint.CheckpointSave(data_iterator)), force=True)

  def restore_latest(self, target_state: Any, data_iterator: Any) -> tuple[Any, dict[str, Any]]:
    """(state, meta) of the newest readable 'latest' checkpoint; `data_iterator` is moved to
    its position.

    `target_state` (arrays or abstract()) gives the structure and the shardings, so a
    checkpoint written on another device count restores onto this mesh. A steps.TrainState
    checkpoint written before the weights were grouped into Variables restores too. A step
    whose arrays do not fit `target_state` (another model or optimizer) is a ConfigError; an
    unreadable one is moved aside (see the module doc) and the previous one is tried.
    """
    for step in sorted(self.latest.all_steps(), reverse=True):
      try:
        saved = _saved_tree(item_path(self.latest.directory, step, "state"))
      except Exception as e:  # pylint: disable=broad-except
        self._move_aside(self.latest, step, e)
        continue
      legacy = hasattr(target_state, "legacy") and VARIABLES not in saved
      target = target_state.legacy() if legacy else target_state
      _check_fits(saved, target, item_path(self.latest.directory, step, "state"))
      try:
        restored = self.latest.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract(target)), meta=ocp.args.JsonRestore()))
        data_state = self._data_state(step)
      except Exception as e:  # pylint: disable=broad-except
        self._move_aside(self.latest, step, e)
        continue
      data_iterator.set_state(data_state)
      state = type(target_state).from_legacy(restored.state) if legacy else restored.state
      return state, restored.meta
    raise NotFoundError(f"{self.latest.directory}: no readable checkpoint is left (the unreadable "
                        "ones were moved aside as <step>.unreadable); remove "
                        f"{os.path.dirname(self.latest.directory)} to start the run over.")

  def _move_aside(self, manager: ocp.CheckpointManager, step: int, error: Exception) -> None:
    """Renames unreadable step `step` of `manager` to <step>.unreadable and says so."""
    path = ocp.step.build_step_path(manager.directory, ocp.step.standard_name_format(), step)
    aside = pathlib.Path(f"{path}.unreadable")
    if jax.process_index() == 0:
      if aside.exists():
        aside = pathlib.Path(f"{path}.unreadable-{int(time.time())}")
      os.rename(path, aside)
    reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
    logging.warning("Checkpoint step %d in %s cannot be read (%s): moved it to %s; trying the "
                    "one before.", step, manager.directory, reason, aside.name)
    manager.reload()

  def _data_state(self, step: int) -> dict[str, Any]:
    """This process's saved iterator position at `step`.

    A checkpoint written by another number of processes has no file for this process:
    process 0's is taken, as the position counts global batches (the same on every process).
    """
    folder = item_path(self.latest.directory, step, "data")
    # Grain's CheckpointSave names the files process_<index>-of-<count>.json.
    path = folder / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    if not path.exists():
      written = sorted(folder.glob("process_0-of-*.json"))
      if not written:
        raise NotFoundError(f"{folder}: no data iterator state (process_*-of-*.json); "
                                "the checkpoint is incomplete: delete this step's folder.")
      path = written[0]
      logging.info("Checkpoint %d was written by another number of processes; data position "
                   "from %s.", step, path.name)
    return json.loads(path.read_text())

  def is_among_best(self, value: float) -> bool:
    """Whether a model with validation top-1 `value` belongs among the best K kept."""
    return len(self._best_values) < self.keep_best or value > min(self._best_values)

  def save_best(self, step: int, model: Any, meta: dict[str, Any], value: float) -> None:
    with _writing(self.best):
      self.best.save(step, args=ocp.args.Composite(
          model=ocp.args.StandardSave(model), meta=ocp.args.JsonSave(meta)),
          metrics={BEST_METRIC: value}, force=True)
    self._best_values = sorted(self._best_values + [value])[-self.keep_best:]

  def restore_best(self, target_model: Any) -> tuple[Any, dict[str, Any]] | None:
    """(model variables, meta) of the best readable checkpoint, or None if none was written.

    An unreadable one is moved aside (see the module doc) and the next best is used; when
    none is readable, NotFoundError says how to evaluate the latest checkpoint instead.
    """
    self.best.wait_until_finished()
    ranked = sorted(self.best.all_steps(), key=lambda s: self.best.metrics(s)[BEST_METRIC],
                    reverse=True)
    if not ranked:
      return None
    for step in ranked:
      try:
        restored = self.best.restore(step, args=ocp.args.Composite(
            model=ocp.args.StandardRestore(abstract(target_model)), meta=ocp.args.JsonRestore()))
      except Exception as e:  # pylint: disable=broad-except
        self._move_aside(self.best, step, e)
        continue
      return restored.model, restored.meta
    workdir = os.path.dirname(os.path.dirname(self.best.directory))
    raise NotFoundError(f"{self.best.directory}: no readable best checkpoint is left (moved aside "
                        "as <step>.unreadable); evaluate the latest one instead: python -m "
                        f"efficientnet_jax.evaluate --workdir={workdir} --checkpoint=latest")

  def check_saves(self) -> None:
    """Raises CheckpointSaveError (one line: the folder and the OS error) when a background
    write has failed; cheap enough to call after every step."""
    self._surface("check_for_errors")

  def _surface(self, method: str) -> None:
    """Calls `method` on both managers; a failed write becomes a CheckpointSaveError."""
    for manager in (self.latest, self.best):
      with _writing(manager):
        getattr(manager, method)()

  def wait(self) -> None:
    """Blocks until every pending asynchronous write is complete (CheckpointSaveError if one
    failed)."""
    self._surface("wait_until_finished")

  def close(self) -> None:
    """Waits for pending writes and releases the managers (CheckpointSaveError if a write
    failed)."""
    self._surface("close")

  def __enter__(self) -> Checkpoints:
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    try:
      self.close()
    except CheckpointSaveError:
      if exc_type is None:  # Otherwise the error under way is the one to report.
        raise


@contextlib.contextmanager
def _writing(manager: ocp.CheckpointManager):
  """Turns any failure of a (background) write of `manager` into a one-line CheckpointSaveError."""
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointSaveError(
        f"Writing a checkpoint into {manager.directory} failed: {_root_cause(e)}. The "
        "checkpoints written before are intact; fix the cause (e.g. free disk space) and "
        "rerun with the same workdir to resume.") from e


def _saved_tree(path: pathlib.Path) -> dict[str, Any]:
  """The metadata tree (shapes, dtypes) of a saved pytree item: reads no array data."""
  with ocp.PyTreeCheckpointer() as reader:
    return reader.metadata(path).item_metadata.tree


def _names(path: tuple[Any, ...]) -> tuple[str, ...]:
  return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _check_fits(saved: Any, target: Any, where: pathlib.Path) -> None:
  """ConfigError naming the first array whose saved shape differs from `target`'s."""
  shapes = {_names(p): tuple(getattr(leaf, "shape", ()) or ())
            for p, leaf in jax.tree_util.tree_flatten_with_path(saved)[0]}
  for p, leaf in jax.tree_util.tree_flatten_with_path(target)[0]:
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      continue  # Saved as its key data (an extra trailing axis).
    name = _names(p)
    saved_shape = shapes.get(name)
    if saved_shape is not None and saved_shape != tuple(leaf.shape):
      raise ConfigError(
          f"{where}: {'/'.join(name)} was saved with shape {saved_shape}, this config's model "
          f"has {tuple(leaf.shape)}: the workdir belongs to another model or optimizer; use a "
          "new --workdir or the config the run was started with.")


def _root_cause(error: BaseException) -> str:
  """The innermost OSError (e.g. '[Errno 28] No space left on device: path') or the error."""
  seen, stack, found = set(), [error], None
  while stack:
    e = stack.pop()
    if e is None or id(e) in seen:
      continue
    seen.add(id(e))
    if isinstance(e, OSError) and found is None:
      found = e
    stack += [e.__cause__, e.__context__, *getattr(e, "exceptions", ())]
  e = found or error
  return f"{type(e).__name__}: {e}" if found is None else str(e)


class WorkdirLock:
  """One run per workdir: process 0 holds an exclusive lock on <workdir>/.lock (flock) for
  the run's life and writes its host and pid there. The kernel releases it when the process
  ends, however it ends, so a killed run never blocks a resume. Use as a context manager.
  """

  FILE = ".lock"

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, self.FILE)
    self._fd: int | None = None

  def __enter__(self) -> WorkdirLock:
    holder = None
    if jax.process_index() == 0:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EACCES):
          raise
        holder = os.read(fd, 1000).decode(errors="replace").strip() or "unknown process"
        os.close(fd)
      else:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        self._fd = fd
    if parallel.any_process(holder is not None):
      raise WorkdirInUseError(
          f"{os.path.dirname(self.path)} is in use by another run ({holder or 'see process 0'}); "
          "wait for it or stop it, or pass another --workdir.")
    return self

  def __exit__(self, *exc) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None


def manager_dir(workdir: str, kind: str) -> str:
  """<workdir>/checkpoints/<kind> for kind 'latest' or 'best'."""
  return os.path.join(os.path.abspath(workdir), "checkpoints", kind)


def item_path(directory: str | os.PathLike, step: int, item: str) -> pathlib.Path:
  """The folder of item `item` ('state', 'model', 'meta', 'data') of checkpoint `step`."""
  return pathlib.Path(ocp.step.build_step_path(
      directory, ocp.step.standard_name_format(), step)) / item


def find_step(workdir: str, which: str | int) -> tuple[str, int]:
  """(kind, step) of a finished checkpoint of `workdir`: `which` is 'best' (highest validation
  top-1), 'latest' or a step number (among the latest, then the best checkpoints)."""
  found = {}
  for kind in (LATEST, BEST):
    if os.path.isdir(manager_dir(workdir, kind)):
      with ocp.CheckpointManager(manager_dir(workdir, kind)) as manager:
        found[kind] = (manager.all_steps(),
                       manager.best_step() if kind == BEST else manager.latest_step())
  if which in (LATEST, BEST):
    step = found.get(which, ((), None))[1]
    if step is None:
      raise NotFoundError(f"{manager_dir(workdir, which)}: no finished {which!r} checkpoint; "
                              "a run writes them from its first epoch on.")
    return which, step
  step = int(which)
  for kind in (LATEST, BEST):
    if step in found.get(kind, ((), None))[0]:
      return kind, step
  listed = {k: sorted(v[0]) for k, v in found.items()}
  raise NotFoundError(f"{workdir}: no checkpoint at step {step} (steps kept: {listed}).")


def read_variables(workdir: str, kind: str, step: int, target: Any, *, ema: bool) -> Any:
  """The model weights (steps.Variables; with the EMA if `ema`) of checkpoint `step` of `kind`.

  `target`: abstract steps.Variables without EMA (shapes, dtypes, shardings); the EMA, when
  asked for, has the same structure. Nothing else of the checkpoint (optimizer state) is read.
  """
  path = item_path(manager_dir(workdir, kind), step, "model" if kind == BEST else "state")
  with ocp.PyTreeCheckpointer() as reader:
    saved = reader.metadata(path).item_metadata.tree
    weights = {"params": target.params, "batch_stats": target.batch_stats}
    if ema:
      holder = saved.get(VARIABLES, saved) if kind == LATEST else saved
      if "ema" not in holder:
        raise ConfigError(f"{path}: the run kept no EMA (optim.ema_decay=0); drop --ema.")
      weights["ema"] = dict(weights)
    wanted = {VARIABLES: weights} if kind == LATEST and VARIABLES in saved else weights
    restored = reader.restore(path, args=ocp.args.PyTreeRestore(
        item=wanted, restore_args=ocp.checkpoint_utils.construct_restore_args(wanted),
        partial_restore=True))
  restored = restored.get(VARIABLES, restored)
  ema_tree = restored.get("ema")
  return type(target)(restored["params"], restored["batch_stats"],
                      None if ema_tree is None else type(target)(**ema_tree))


class StopSignal:
  """Turns SIGTERM/SIGINT into a flag the training loop polls between steps.

  Use as a context manager; previous handlers come back on exit. A second SIGINT
  raises KeyboardInterrupt for a user who does not want to wait for the save.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self._event = threading.Event()
    self._previous: dict[int, Any] = {}

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT and self._event.is_set():
      raise KeyboardInterrupt
    logging.warning("Received %s: finishing the step, saving a checkpoint, then exiting.",
                    signal.Signals(signum).name)
    self._event.set()

  def __enter__(self) -> StopSignal:
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def requested(self) -> bool:
    return self._event.is_set()
