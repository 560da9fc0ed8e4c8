"""Orbax checkpoints: 'latest' (resume) and 'best' (model selection) managers; preemption.

Layout under <workdir>/checkpoints/:
  latest/<step>/  state (steps.TrainState), meta (JSON: epoch, plateau, early stop, ...),
                  data (Grain iterator state, one file per process); keep N, async.
  best/<step>/    model (steps.Variables: params, BN stats, EMA), meta (JSON: epoch,
                  validation metrics); keep K by validation top-1.
Two managers, because Orbax's best_fn alone would also prune the checkpoints needed to
resume. Orbax writes each step into a temporary folder and renames it when complete, so
an interrupted save never damages the previous checkpoint.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import threading
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

BEST_METRIC = "val/top1"
LATEST, BEST = "latest", "best"
# The TrainState field that holds the weights (steps.TrainState.variables); a 'latest'
# checkpoint without it was written before the weights were grouped (steps.TrainState.legacy).
VARIABLES = "variables"


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
            max_to_keep=cfg.keep_latest, enable_async_checkpointing=cfg.async_save, create=True))
    self.best = ocp.CheckpointManager(
        manager_dir(workdir, BEST),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=cfg.keep_best, best_fn=lambda m: m[BEST_METRIC], best_mode="max",
            enable_async_checkpointing=cfg.async_save, create=True))
    # Validation top-1 of the kept best checkpoints (Orbax's metrics of a step still
    # being written are not readable yet, so they are tracked here).
    self._best_values = sorted(self.best.metrics(s)[BEST_METRIC] for s in self.best.all_steps())

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def save_latest(self, step: int, state: Any, meta: dict[str, Any], data_iterator: Any) -> None:
    """Saves the train state, host-side meta and the data iterator position at `step`."""
    if step in self.latest.all_steps():
      return
    self.latest.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta),
        data=grain.checkpoint.CheckpointSave(data_iterator)), force=True)

  def restore_latest(self, target_state: Any, data_iterator: Any) -> tuple[Any, dict[str, Any]]:
    """(state, meta) of the latest checkpoint; `data_iterator` is moved to its position.

    `target_state` (arrays or abstract()) gives the structure and the shardings, so a
    checkpoint written on another device count restores onto this mesh. A steps.TrainState
    checkpoint written before the weights were grouped into Variables restores too.
    """
    step = self.latest.latest_step()
    legacy = hasattr(target_state, "legacy") and VARIABLES not in self._saved_state_keys(step)
    target = target_state.legacy() if legacy else target_state
    restored = self.latest.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract(target)), meta=ocp.args.JsonRestore()))
    data_iterator.set_state(self._data_state(step))
    state = type(target_state).from_legacy(restored.state) if legacy else restored.state
    return state, restored.meta

  def _saved_state_keys(self, step: int) -> set[str]:
    """The top-level keys of the state saved at `step`."""
    with ocp.PyTreeCheckpointer() as reader:
      return set(reader.metadata(item_path(self.latest.directory, step, "state")).item_metadata.tree)

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
        raise FileNotFoundError(f"{folder}: no data iterator state (process_*-of-*.json); "
                                "the checkpoint is incomplete: delete this step's folder.")
      path = written[0]
      logging.info("Checkpoint %d was written by another number of processes; data position "
                   "from %s.", step, path.name)
    return json.loads(path.read_text())

  def is_among_best(self, value: float) -> bool:
    """Whether a model with validation top-1 `value` belongs among the best K kept."""
    return len(self._best_values) < self.keep_best or value > min(self._best_values)

  def save_best(self, step: int, model: Any, meta: dict[str, Any], value: float) -> None:
    self.best.save(step, args=ocp.args.Composite(
        model=ocp.args.StandardSave(model), meta=ocp.args.JsonSave(meta)),
        metrics={BEST_METRIC: value}, force=True)
    self._best_values = sorted(self._best_values + [value])[-self.keep_best:]

  def restore_best(self, target_model: Any) -> tuple[Any, dict[str, Any]] | None:
    """(model variables, meta) of the best checkpoint, or None if there is none."""
    self.best.wait_until_finished()
    step = self.best.best_step()
    if step is None:
      return None
    restored = self.best.restore(step, args=ocp.args.Composite(
        model=ocp.args.StandardRestore(abstract(target_model)), meta=ocp.args.JsonRestore()))
    return restored.model, restored.meta

  def wait(self) -> None:
    """Blocks until every pending asynchronous write is complete."""
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    """Waits for pending writes and releases the managers."""
    self.latest.close()
    self.best.close()

  def __enter__(self) -> Checkpoints:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


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
      raise FileNotFoundError(f"{manager_dir(workdir, which)}: no finished {which!r} checkpoint; "
                              "a run writes them from its first epoch on.")
    return which, step
  step = int(which)
  for kind in (LATEST, BEST):
    if step in found.get(kind, ((), None))[0]:
      return kind, step
  listed = {k: sorted(v[0]) for k, v in found.items()}
  raise FileNotFoundError(f"{workdir}: no checkpoint at step {step} (steps kept: {listed}).")


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
        raise ValueError(f"{path}: the run kept no EMA (optim.ema_decay=0); drop --ema.")
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
