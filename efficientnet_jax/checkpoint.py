"""Orbax checkpoints: 'latest' (resume) and 'best' (model selection) managers; preemption.

Layout under <workdir>/checkpoints/:
  latest/<step>/  state (TrainState), meta (JSON: epoch, plateau, early stop, ...),
                  data (Grain iterator state, one file per process); keep N, async.
  best/<step>/    model (params, BN stats, EMA), meta (JSON: epoch, validation metrics);
                  keep K by validation top-1.
Two managers, because Orbax's best_fn alone would also prune the checkpoints needed to
resume. Orbax writes each step into a temporary folder and renames it when complete, so
an interrupted save never damages the previous checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

BEST_METRIC = "val/top1"


def abstract(tree: Any) -> Any:
  """Shape/dtype/sharding placeholders of a pytree: the target of a restore."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class Checkpoints:
  """The run's 'latest' and 'best' checkpoint managers."""

  def __init__(self, workdir: str, cfg: ml_collections.ConfigDict):
    root = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.keep_best = cfg.keep_best
    self.latest = ocp.CheckpointManager(
        os.path.join(root, "latest"),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=cfg.keep_latest, enable_async_checkpointing=cfg.async_save, create=True))
    self.best = ocp.CheckpointManager(
        os.path.join(root, "best"),
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
    checkpoint written on another device count restores onto this mesh.
    """
    step = self.latest.latest_step()
    restored = self.latest.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract(target_state)), meta=ocp.args.JsonRestore()))
    data_iterator.set_state(self._data_state(step))
    return restored.state, restored.meta

  def _data_state(self, step: int) -> dict[str, Any]:
    """This process's saved iterator position at `step`.

    A checkpoint written by another number of processes has no file for this process:
    process 0's is taken, as the position counts global batches (the same on every process).
    """
    folder = ocp.step.build_step_path(
        self.latest.directory, ocp.step.standard_name_format(), step) / "data"
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
