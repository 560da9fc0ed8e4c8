"""The training run: train_and_evaluate(config, workdir).

Data-parallel training with validation each `train.eval_every_epochs`, reduce-on-plateau
and early stopping on validation loss, 'latest' and 'best' checkpoints, automatic
resumption from the workdir, a clean exit on SIGTERM/SIGINT at any point, and at the end a
test evaluation of the best checkpoint written to results.json and TensorBoard.

What holds when things go wrong: every config field is checked before any work; one run at
a time holds a workdir; a diverging run (a non-finite loss or parameter) stops at once and
never saves a non-finite checkpoint; a failed checkpoint write stops the run at the next
step, the earlier checkpoints intact; an unreadable checkpoint is moved aside and the one
before it is used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from efficientnet_jax import (checkpoint, compile_cache, config_checks, data, device_feed, distill,
                              metrics, optim, parallel, progress, progressive, run_model, steps,
                              summaries)
from efficientnet_jax.errors import ConfigError, NotFoundError, UserError
from efficientnet_jax.models import EfficientNet


class TrainingDiverged(UserError):
  """The loss or the parameters stopped being finite."""


@dataclasses.dataclass
class HostState:
  """Training state kept on the host and saved as JSON with every checkpoint."""

  plateau: optim.Plateau
  early_stopping: optim.EarlyStopping
  stopped_early: bool = False
  best_val_top1: float = -1.0
  wall_seconds: float = 0.0  # Over all sessions of this run.
  train_images_per_sec: float | None = None  # Of the last session that trained.
  time_split: dict[str, float] = dataclasses.field(default_factory=dict)  # progress.TimeSplit's.

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def restore(self, meta: dict[str, Any]) -> None:
    """Takes the saved progress; hyperparameters stay those of the current config."""
    for tracker, saved in ((self.plateau, meta["plateau"]),
                           (self.early_stopping, meta["early_stopping"])):
      for field in tracker.STATE:
        setattr(tracker, field, saved[field])
    self.stopped_early = meta["stopped_early"]
    self.best_val_top1 = meta["best_val_top1"]
    self.wall_seconds = meta["wall_seconds"]
    self.train_images_per_sec = meta.get("train_images_per_sec")
    self.time_split = dict(meta.get("time_split", {}))


def resolve_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A validated copy of `config` (the caller's stays untouched): every field checked
  (config_checks.validate) before any work."""
  config = config.copy_and_resolve_references()
  config_checks.validate(config)
  return config


def _check_classes(config: ml_collections.ConfigDict, class_names: tuple[str, ...]) -> None:
  if config.model.num_classes != len(class_names):
    raise ConfigError(
        f"model.num_classes={config.model.num_classes} but the dataset (data.dir="
        f"{config.data.dir!r}) has {len(class_names)} classes; "
        f"set --config.model.num_classes={len(class_names)}.")


def close(iterator: Any) -> None:
  """Stops a data iterator's worker processes and frees their shared memory."""
  if hasattr(iterator, "close"):
    iterator.close()


def evaluate(compiled: steps.CompiledSteps, weights: steps.Variables,
             data_config: ml_collections.ConfigDict, split: str, batch_size: int,
             should_stop: Callable[[], bool] = lambda: False) -> metrics.EvalMetrics | None:
  """Metrics of `weights` on `split`, every example exactly once over all processes; None
  when `should_stop` (polled between batches, alike on every process) interrupted it."""
  total = None
  iterator = data.eval_iterator(data_config, split, global_batch_size=batch_size)
  try:
    for batch in iterator:
      if parallel.any_process(should_stop()):
        return None
      total = metrics.merge(total, compiled.evaluate(weights, parallel.global_batch(batch, compiled.mesh)))
  finally:
    close(iterator)
  return total


class Trainer:
  """One session of a run: the state, the compiled steps, and the loop over them."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str,
               ckpts: checkpoint.Checkpoints, stop: checkpoint.StopSignal | None = None):
    self.session_start = time.perf_counter()
    self.workdir, self.ckpts = workdir, ckpts
    self.stop = stop or checkpoint.StopSignal()
    self.mesh = parallel.create_mesh()
    parallel.host_batch_size(config.train.batch_size, self.mesh, "train.batch_size")
    parallel.host_batch_size(config.eval.batch_size, self.mesh, "eval.batch_size")

    with parallel.main_process_first("prepare_data"):  # Process 0 prepares; others then read.
      dataset_dir = data.ensure_prepared(config.data)
    self.class_names = data.class_names(dataset_dir)
    _check_classes(config, self.class_names)
    model, convention = run_model.build(config)
    self.config = config = run_model.with_input(config, convention)
    self.steps_per_epoch = data.steps_per_epoch(config.data, config.train.batch_size)
    self.total_steps = config.train.num_epochs * self.steps_per_epoch

    teacher = distill.load_teacher(config.distill, model.options)

    def build_steps(config: ml_collections.ConfigDict, model: EfficientNet):
      return steps.build(
          model, config.optim, self.mesh, mean=convention.mean, std=convention.std,
          steps_per_epoch=self.steps_per_epoch, num_epochs=config.train.num_epochs,
          accumulate_steps=config.train.accumulate_steps, mixup_config=config.mixup,
          teacher=teacher, seed=config.seed, tta=config.eval.tta)

    self.compiled, self.state = build_steps(config, model)
    # Progressive learning: each stage's train step, from a model of its dropout rate.
    stages = progressive.plan(config, self.steps_per_epoch)
    self.stage_steps = progressive.StagedSteps(
        stages, self.compiled,
        lambda stage: build_steps(stage, EfficientNet(run_model.model_options(stage)))[0])
    self.host = HostState(optim.Plateau.from_config(config.optim),
                          optim.EarlyStopping.from_config(config.optim))
    self.train_iter = progressive.train_iterator(stages, global_batch_size=config.train.batch_size,
                                                 seed=config.seed)
    self.feed: device_feed.DevicePrefetch | None = None  # train()'s, on the train iterator.
    # Train metrics of the logging interval in progress (carried over a resume).
    self.train_metrics: metrics.TrainMetrics | None = None
    if ckpts.latest_step() is not None:
      self.state, meta = ckpts.restore_latest(self.state, self.train_iter)
      self.host.restore(meta)
      self.train_metrics = metrics.from_json(metrics.TrainMetrics, meta.get("train_metrics"))
      logging.info("Resumed from %s at step %d.", workdir, int(self.state.step))
    self.step = int(self.state.step)
    self.saved_step = self.step if ckpts.latest_step() is not None else None
    self.wall_before = self.host.wall_seconds
    self.split_before = dict(self.host.time_split)

    self.repl = parallel.replicated(self.mesh)
    self.writer = summaries.create_writer(workdir)
    if self.step == 0:
      summaries.write_run_info(workdir, config, self.writer)
    run_model.save(workdir, model.options, convention, self.class_names)
    self.split = progress.TimeSplit(since=self.session_start)

  def finished_training(self) -> bool:
    return self.step >= self.total_steps or self.host.stopped_early

  def train(self) -> bool:
    """Runs the loop to the last epoch or an early stop; False when a signal or
    train.stop_at_step ended it (its checkpoint saved)."""
    config, spe = self.config, self.steps_per_epoch
    logging.info("Training %s: %d classes, %d steps/epoch, %d epochs, global batch %d on %d "
                 "device(s); from step %d.", config.model.arch, len(self.class_names), spe,
                 config.train.num_epochs, config.train.batch_size, self.mesh.devices.size, self.step)
    console = progress.Progress(self.total_steps, self.step, config.train.batch_size)
    timer = progress.Throughput()
    split, last_compiled = self.split, None
    split.restart()
    self.feed = device_feed.DevicePrefetch(self.train_iter, self.mesh, timing=split.timing)
    while not self.finished_training():
      batch, device_batch = next(self.feed)
      compiled = self.stage_steps.at(self.step)
      if self.step == 0 and config.train.num_sample_images:
        with split.timing("compile"):
          seen = compiled.model_view(batch["image"], batch["label"], self.step)
          self.writer.write_images(0, {"train/augmented_samples": summaries.image_grid(
              seen[:config.train.num_sample_images])[None]})
      if compiled is not last_compiled:  # Compiles (or loads from the cache): once per stage.
        with split.timing("compile"), compile_cache.reporting("train step"):
          self.state, step_metrics = compiled.train(self.state, device_batch)
          jax.block_until_ready(self.state)
        last_compiled = compiled
      else:
        self.state, step_metrics = compiled.train(self.state, device_batch)
      self.step += 1
      split.step()
      timer.step(self.state, config.train.batch_size)
      self.train_metrics = metrics.merge(self.train_metrics, step_metrics)
      self.ckpts.check_saves()
      epoch, in_epoch = divmod(self.step, spe)
      logged = self.step % config.train.log_every_steps == 0 or not in_epoch
      if logged:
        self._check_finite()
        scalars = {**self.compiled.train_scalars(self.train_metrics), **console.timing(self.step),
                   **split.interval(), "train/epoch": self.step / spe}
        self.writer.write_scalars(self.step, scalars)
        console.log(self.step, epoch + (1 if in_epoch else 0), config.train.num_epochs, scalars)
        self.train_metrics = None
      if not in_epoch and (epoch % config.train.eval_every_epochs == 0
                           or self.step == self.total_steps):
        with timer.paused(self.state), split.timing("validation"):
          self.validate(epoch)
        console.timing(self.step)  # The next interval's throughput excludes validation.
        split.interval()
      # Processes must stop after the same step, even if a signal reached only some of
      # them: with several, they agree (a collective) where the host waits anyway.
      poll = jax.process_count() == 1 or logged
      stop_now = ((poll and parallel.any_process(self.stop.requested()))
                  or self.step == config.train.stop_at_step)
      if not in_epoch or self.step % config.checkpoint.every_steps == 0 or stop_now:
        self.host.train_images_per_sec = (timer.images_per_sec(self.state)
                                          or self.host.train_images_per_sec)
        self.save_latest()
      if not in_epoch:
        logging.info("epoch %d time: %s", epoch, progress.format_split(split.end_epoch()))
      if stop_now:
        logging.info("Stopping at step %d; rerun with the same workdir to resume.", self.step)
        return False
    if self.step not in self.ckpts.latest.all_steps():
      self.save_latest()
    return True

  def _check_finite(self) -> None:
    """Raises TrainingDiverged, naming the first bad step and the learning rate, when a loss
    or parameter of the current interval was not finite."""
    bad = metrics.first_nonfinite_step(self.train_metrics)
    if bad is None:
      return
    lr = metrics.scalars(self.train_metrics, "train")["train/learning_rate"]
    kept = ("no checkpoint was written yet" if self.saved_step is None
            else f"the last checkpoint, step {self.saved_step}, is finite")
    raise TrainingDiverged(
        f"Training diverged: the loss or the parameters stopped being finite at step {bad} "
        f"(learning rate {lr:.3g}); {kept}. Lower --config.optim.lr (or set "
        "--config.optim.grad_clip_norm) and rerun with the same workdir to resume from it.")

  def evaluate(self, weights: steps.Variables, split: str,
               should_stop: Callable[[], bool] = lambda: False) -> metrics.EvalMetrics | None:
    return evaluate(self.compiled, weights, self.config.data, split, self.config.eval.batch_size,
                    should_stop)

  def validate(self, epoch: int) -> None:
    """Validation -> TensorBoard, plateau (lr scale), early stopping, 'best' checkpoint."""
    host, variables = self.host, self.state.variables
    scalars = metrics.scalars(self.evaluate(variables.weights(), "val"), "val")
    if variables.ema is not None:
      scalars.update(metrics.scalars(self.evaluate(variables.weights(ema=True), "val"), "val_ema"))
    if not all(np.isfinite(v) for v in scalars.values()):
      raise TrainingDiverged(
          f"Training diverged: the validation loss at epoch {epoch} (step {self.step}) is "
          f"{scalars['val/loss']}; no checkpoint of it was written. Lower --config.optim.lr and "
          "rerun with the same workdir to resume from the last checkpoint.")
    self.writer.write_scalars(self.step, {**scalars, "train/epoch": epoch})
    loss, top1 = scalars["val/loss"], scalars["val/top1"]
    if self.config.optim.plateau.enabled and host.plateau.update(loss):
      logging.info("Validation loss plateaued: learning rate scale now %g.", host.plateau.scale)
      self.state = self.state.replace(
          lr_scale=jax.device_put(jnp.float32(host.plateau.scale), self.repl))
    if self.config.optim.early_stopping.enabled and host.early_stopping.update(loss):
      host.stopped_early = True
    host.best_val_top1 = max(host.best_val_top1, top1)
    if self.ckpts.is_among_best(top1):
      with self.split.timing("checkpoint"):
        self.ckpts.save_best(self.step, variables, {"epoch": epoch, "step": self.step, **scalars},
                             top1)
    logging.info("epoch %d/%d validation: loss=%.4f top1=%.4f top5=%.4f (best top1 %.4f)%s",
                 epoch, self.config.train.num_epochs, loss, top1, scalars["val/top5"],
                 host.best_val_top1, " -> early stop" if host.stopped_early else "")

  def save_latest(self) -> None:
    """Saves a 'latest' checkpoint, after checking that everything in it is finite."""
    self._check_finite()
    jax.block_until_ready(self.state)  # Its steps' time is not the checkpoint's.
    with self.split.timing("checkpoint"):
      self._update_wall_time()
      meta = {**self.host.to_json(), "train_metrics": metrics.to_json(self.train_metrics)}
      self.ckpts.save_latest(self.step, self.state, meta, self.feed or self.train_iter)
    self.saved_step = self.step

  def _update_wall_time(self) -> None:
    """The run's wall time and time split so far, over all its sessions."""
    self.host.wall_seconds = self.wall_before + time.perf_counter() - self.session_start
    session = self.split.total()
    self.host.time_split = {part: self.split_before.get(part, 0.0) + session[part]
                            for part in session}

  def test_best(self) -> dict[str, Any] | None:
    """Evaluates the best checkpoint on test; writes results.json and TensorBoard summaries.
    None when a stop signal interrupted the evaluation."""
    restored = self.ckpts.restore_best(self.state.variables)
    if restored is None:
      raise NotFoundError(
          f"No best checkpoint in {self.workdir}/checkpoints/best to test: no validation ran.")
    best, best_meta = restored
    with self.split.timing("test"):
      test = self.evaluate(best.weights(), "test", self.stop.requested)
    if test is None:
      return None
    confusion = np.asarray(jax.device_get(test.confusion.compute()))
    scalars = metrics.scalars(test, "test")
    results = {
        "test": {"top1": scalars["test/top1"], "top5": scalars["test/top5"],
                 "loss": scalars["test/loss"],
                 **metrics.classification_report(confusion, self.class_names)},
        "best_checkpoint": {"step": best_meta["step"], "epoch": best_meta["epoch"],
                            "val_top1": best_meta["val/top1"], "val_loss": best_meta["val/loss"]},
        "epochs": self.step // self.steps_per_epoch,
        "steps": self.step,
        "stopped_early": self.host.stopped_early,
        "wall_time_sec": None,  # Below, after the test evaluations.
        "train_images_per_sec": self.host.train_images_per_sec,
        "tta": self.config.eval.tta,
        "time_split_sec": None,
    }
    if best.ema is not None:
      with self.split.timing("test"):
        ema = self.evaluate(best.weights(ema=True), "test", self.stop.requested)
      if ema is None:
        return None
      ema = metrics.scalars(ema, "test_ema")
      results["test_ema"] = {k.split("/")[1]: v for k, v in ema.items()}
      scalars.update(ema)
    self._update_wall_time()
    results.update(wall_time_sec=self.host.wall_seconds, time_split_sec=self.host.time_split)
    self.writer.write_scalars(self.step, scalars)
    self.writer.write_images(self.step, {
        "test/confusion_matrix": summaries.confusion_image(confusion)[None]})
    summaries.write_json(os.path.join(self.workdir, "results.json"), results)
    hardest = results["test"]["hardest_classes"][:3]
    logging.info("Test (best checkpoint: epoch %d): top1=%.4f top5=%.4f loss=%.4f; hardest: %s",
                 best_meta["epoch"], scalars["test/top1"], scalars["test/top5"], scalars["test/loss"],
                 ", ".join(f"{c['class']} ({c['accuracy']:.2f})" for c in hardest))
    return results

  def close(self) -> None:
    """Stops the input workers and frees the shared memory of their batches (batches still
    referenced from reference cycles would otherwise outlive the run: Python's resource
    tracker then reports them as leaked), and flushes TensorBoard."""
    self.feed = None
    close(self.train_iter)
    gc.collect()
    self.writer.flush()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any] | None:
  """Trains (resuming from `workdir` if it holds a checkpoint), then tests the best model.

  Returns the results also written to <workdir>/results.json, or None when a signal or
  train.stop_at_step stopped the run first (its checkpoint saved: rerunning resumes, or
  goes straight to the test evaluation when training had finished).
  """
  config = resolve_config(config)
  compile_cache.enable(config.compile_cache)
  os.makedirs(workdir, exist_ok=True)
  with contextlib.ExitStack() as stack:
    stack.enter_context(checkpoint.WorkdirLock(workdir))
    stop = stack.enter_context(checkpoint.StopSignal())
    ckpts = stack.enter_context(checkpoint.Checkpoints(workdir, config.checkpoint))
    trainer = Trainer(config, workdir, ckpts, stop)
    stack.callback(trainer.close)
    results = None
    if trainer.train():
      ckpts.wait()
      ckpts.check_saves()
      if config.eval.test_at_end and not parallel.any_process(stop.requested()):
        results = trainer.test_best()
      if config.eval.test_at_end and results is None:
        logging.info("Stopping before the test evaluation; rerun with the same workdir to run it.")
        return None
    else:
      return None
  logging.info("Done: %s", workdir)
  return results
