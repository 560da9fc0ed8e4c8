"""The training run: train_and_evaluate(config, workdir).

Data-parallel training with validation each `train.eval_every_epochs`, reduce-on-plateau
and early stopping on validation loss, 'latest' and 'best' checkpoints, automatic
resumption from the workdir, a clean exit on SIGTERM/SIGINT, and at the end a test
evaluation of the best checkpoint written to results.json and TensorBoard.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from efficientnet_jax import (checkpoint, data, distill, metrics, optim, parallel, progress,
                              run_model, steps, summaries)


@dataclasses.dataclass
class HostState:
  """Training state kept on the host and saved as JSON with every checkpoint."""

  plateau: optim.Plateau
  early_stopping: optim.EarlyStopping
  stopped_early: bool = False
  best_val_top1: float = -1.0
  wall_seconds: float = 0.0  # Over all sessions of this run.

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


def resolve_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A validated copy of `config` (the caller's stays untouched)."""
  config = config.copy_and_resolve_references()
  if config.model.in_channels != config.data.channels:
    raise ValueError(f"model.in_channels={config.model.in_channels} but data.channels="
                     f"{config.data.channels}; set both to 3 (RGB) or both to 1 (grayscale).")
  if config.train.num_epochs < 1 or config.train.eval_every_epochs < 1:
    raise ValueError("train.num_epochs and train.eval_every_epochs must be >= 1.")
  return config


def _check_classes(config: ml_collections.ConfigDict, class_names: tuple[str, ...]) -> None:
  if config.model.num_classes != len(class_names):
    raise ValueError(
        f"model.num_classes={config.model.num_classes} but the dataset (data.dir="
        f"{config.data.dir!r}) has {len(class_names)} classes; "
        f"set --config.model.num_classes={len(class_names)}.")


def evaluate(compiled: steps.CompiledSteps, weights: steps.Variables,
             data_config: ml_collections.ConfigDict, split: str,
             batch_size: int) -> metrics.EvalMetrics:
  """Metrics of `weights` on `split`, every example exactly once over all processes."""
  total = None
  for batch in data.eval_iterator(data_config, split, global_batch_size=batch_size):
    total = metrics.merge(total, compiled.evaluate(weights, parallel.global_batch(batch, compiled.mesh)))
  return total


class Trainer:
  """One session of a run: the state, the compiled steps, and the loop over them."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str,
               ckpts: checkpoint.Checkpoints):
    self.session_start = time.perf_counter()
    self.workdir, self.ckpts = workdir, ckpts
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

    self.compiled, self.state = steps.build(
        model, config.optim, self.mesh, mean=convention.mean, std=convention.std,
        steps_per_epoch=self.steps_per_epoch, num_epochs=config.train.num_epochs,
        accumulate_steps=config.train.accumulate_steps, mixup_config=config.mixup,
        teacher=distill.load_teacher(config.distill, model.options), seed=config.seed)
    self.host = HostState(optim.Plateau.from_config(config.optim),
                          optim.EarlyStopping.from_config(config.optim))
    self.train_iter = data.train_iterator(config.data, global_batch_size=config.train.batch_size,
                                          seed=config.seed)
    if ckpts.latest_step() is not None:
      self.state, meta = ckpts.restore_latest(self.state, self.train_iter)
      self.host.restore(meta)
      logging.info("Resumed from %s at step %d.", workdir, ckpts.latest_step())
    self.step = int(self.state.step)
    self.wall_before = self.host.wall_seconds

    self.repl = parallel.replicated(self.mesh)
    self.writer = summaries.create_writer(workdir)
    if self.step == 0:
      summaries.write_run_info(workdir, config, self.writer)
    run_model.save(workdir, model.options, convention, self.class_names)

  def train(self) -> tuple[bool, float | None]:
    """Runs the loop to the last epoch or an early stop; returns (interrupted, images/s).

    Interrupted means a signal or train.stop_at_step ended it; its checkpoint is saved.
    """
    config, spe = self.config, self.steps_per_epoch
    logging.info("Training %s: %d classes, %d steps/epoch, %d epochs, global batch %d on %d "
                 "device(s); from step %d.", config.model.arch, len(self.class_names), spe,
                 config.train.num_epochs, config.train.batch_size, self.mesh.devices.size, self.step)
    console = progress.Progress(self.total_steps, self.step, config.train.batch_size)
    timer = progress.Throughput()
    train_metrics = None
    with checkpoint.StopSignal() as stop:
      while self.step < self.total_steps and not self.host.stopped_early:
        batch = next(self.train_iter)
        if self.step == 0 and config.train.num_sample_images:
          seen = self.compiled.model_view(batch["image"], batch["label"], self.step)
          self.writer.write_images(0, {"train/augmented_samples": summaries.image_grid(
              seen[:config.train.num_sample_images])[None]})
        self.state, step_metrics = self.compiled.train(self.state,
                                                       parallel.global_batch(batch, self.mesh))
        self.step += 1
        timer.step(self.state, config.train.batch_size)
        train_metrics = metrics.merge(train_metrics, step_metrics)
        epoch, in_epoch = divmod(self.step, spe)
        logged = self.step % config.train.log_every_steps == 0 or not in_epoch
        if logged:
          scalars = {**self.compiled.train_scalars(train_metrics), **console.timing(self.step),
                     "train/epoch": self.step / spe}
          self.writer.write_scalars(self.step, scalars)
          console.log(self.step, epoch + (1 if in_epoch else 0), config.train.num_epochs, scalars)
          train_metrics = None
        if not in_epoch and (epoch % config.train.eval_every_epochs == 0
                             or self.step == self.total_steps):
          with timer.paused(self.state):
            self.validate(epoch)
          console.timing(self.step)  # The next interval's throughput excludes validation.
        # Processes must stop after the same step, even if a signal reached only some of
        # them: with several, they agree (a collective) where the host waits anyway.
        poll = jax.process_count() == 1 or logged
        stop_now = ((poll and parallel.any_process(stop.requested()))
                    or self.step == config.train.stop_at_step)
        if not in_epoch or self.step % config.checkpoint.every_steps == 0 or stop_now:
          self.save_latest()
        if stop_now:
          logging.info("Stopping at step %d; rerun with the same workdir to resume.", self.step)
          return True, timer.images_per_sec(self.state)
    if self.step not in self.ckpts.latest.all_steps():
      self.save_latest()
    return False, timer.images_per_sec(self.state)

  def evaluate(self, weights: steps.Variables, split: str) -> metrics.EvalMetrics:
    return evaluate(self.compiled, weights, self.config.data, split, self.config.eval.batch_size)

  def validate(self, epoch: int) -> None:
    """Validation -> TensorBoard, plateau (lr scale), early stopping, 'best' checkpoint."""
    host, variables = self.host, self.state.variables
    scalars = metrics.scalars(self.evaluate(variables.weights(), "val"), "val")
    if variables.ema is not None:
      scalars.update(metrics.scalars(self.evaluate(variables.weights(ema=True), "val"), "val_ema"))
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
      self.ckpts.save_best(self.step, variables, {"epoch": epoch, "step": self.step, **scalars},
                           top1)
    logging.info("epoch %d/%d validation: loss=%.4f top1=%.4f top5=%.4f (best top1 %.4f)%s",
                 epoch, self.config.train.num_epochs, loss, top1, scalars["val/top5"],
                 host.best_val_top1, " -> early stop" if host.stopped_early else "")

  def save_latest(self) -> None:
    self.host.wall_seconds = self.wall_before + time.perf_counter() - self.session_start
    self.ckpts.save_latest(self.step, self.state, self.host.to_json(), self.train_iter)

  def test_best(self, images_per_sec: float | None) -> dict[str, Any]:
    """Evaluates the best checkpoint on test; writes results.json and TensorBoard summaries."""
    restored = self.ckpts.restore_best(self.state.variables)
    if restored is None:
      raise RuntimeError(f"No best checkpoint in {self.workdir}/checkpoints/best to test.")
    best, best_meta = restored
    test = self.evaluate(best.weights(), "test")
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
        "wall_time_sec": self.host.wall_seconds,
        "train_images_per_sec": images_per_sec,
    }
    if best.ema is not None:
      ema = metrics.scalars(self.evaluate(best.weights(ema=True), "test"), "test_ema")
      results["test_ema"] = {k.split("/")[1]: v for k, v in ema.items()}
      scalars.update(ema)
    self.writer.write_scalars(self.step, scalars)
    self.writer.write_images(self.step, {
        "test/confusion_matrix": summaries.confusion_image(confusion)[None]})
    summaries.write_json(os.path.join(self.workdir, "results.json"), results)
    hardest = results["test"]["hardest_classes"][:3]
    logging.info("Test (best checkpoint: epoch %d): top1=%.4f top5=%.4f loss=%.4f; hardest: %s",
                 best_meta["epoch"], scalars["test/top1"], scalars["test/top5"], scalars["test/loss"],
                 ", ".join(f"{c['class']} ({c['accuracy']:.2f})" for c in hardest))
    return results


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any] | None:
  """Trains (resuming from `workdir` if it holds a checkpoint), then tests the best model.

  Returns the results also written to <workdir>/results.json, or None when a signal or
  train.stop_at_step stopped the run early (its checkpoint saved, ready to resume).
  """
  config = resolve_config(config)
  os.makedirs(workdir, exist_ok=True)
  with checkpoint.Checkpoints(workdir, config.checkpoint) as ckpts:
    trainer = Trainer(config, workdir, ckpts)
    interrupted, images_per_sec = trainer.train()
    ckpts.wait()
    results = None
    if not interrupted and config.eval.test_at_end:
      results = trainer.test_best(images_per_sec)
    trainer.writer.flush()
  if not interrupted:
    logging.info("Done: %s", workdir)
  return results
