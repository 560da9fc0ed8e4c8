"""Progressive learning (EfficientNetV2, Tan & Le 2021): the run in stages of growing image
size and regularization (config.progressive).

train.num_epochs split evenly into S stages (stage i starts at epoch floor(i * E / S)).
Stage i trains at a side growing linearly from progressive.min_image_size (first) to
data.image_size (last), the sizes in between rounded to a multiple of size_multiple, and
each ramp (dropout, RandAugment magnitude, Mixup / CutMix alpha) goes linearly from its
first to its last value. Each stage has its own input pipeline (`StagedIterator`) and its
own train step (`StagedSteps`), compiled once at the stage's first step; validation and
the test always run at data.image_size with the run's one eval step. The global batch, the
steps per epoch and the learning-rate schedule are the run's in every stage.

Resumption is exact: the iterator's checkpointed state names the next step, its stage and
the position in that stage's pipeline; the train step follows the step.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import grain
import ml_collections
from absl import logging

from efficientnet_jax import data, steps
from efficientnet_jax.data.storage import Storage
from efficientnet_jax.errors import ConfigError

# progressive.<ramp> -> the config field it sets in each stage.
RAMPS = {"dropout_rate": "model.dropout_rate", "ra_magnitude": "data.ra_magnitude",
         "mixup_alpha": "mixup.alpha", "cutmix_alpha": "mixup.cutmix_alpha"}


@dataclasses.dataclass(frozen=True)
class Stage:
  """Steps [first_step, end_step) of the run, trained with `config`."""

  index: int
  first_step: int
  end_step: int
  config: ml_collections.ConfigDict  # The run's config with this stage's size and ramps.

  def describe(self, count: int) -> str:
    values = ", ".join(f"{field}={_get(self.config, field):g}" for field in
                       ("data.image_size", *RAMPS.values()))
    return f"stage {self.index + 1}/{count} (steps {self.first_step}-{self.end_step - 1}): {values}"


def enabled(config: ml_collections.ConfigDict) -> bool:
  return config.progressive.stages > 1


def check(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError when config.progressive does not fit the rest of the config."""
  p, fix = config.progressive, "or set --config.progressive.stages=0 (off)"
  if not enabled(config):
    return
  if p.stages > config.train.num_epochs:
    raise ConfigError(f"config.progressive.stages={p.stages} exceeds train.num_epochs="
                      f"{config.train.num_epochs}: each stage needs an epoch; lower it, {fix}.")
  if p.min_image_size > config.data.image_size:
    raise ConfigError(f"config.progressive.min_image_size={p.min_image_size} exceeds "
                      f"data.image_size={config.data.image_size} (the last stage's size); "
                      f"lower it, {fix}.")
  if p.ra_magnitude and config.data.auto_augment != "randaugment":
    raise ConfigError(f"config.progressive.ra_magnitude={tuple(p.ra_magnitude)} ramps RandAugment,"
                      f" but data.auto_augment={config.data.auto_augment!r}: set it to "
                      "'randaugment' or progressive.ra_magnitude=().")


def stage_size(config: ml_collections.ConfigDict, index: int) -> int:
  """The training side of stage `index`: the first min_image_size, the last data.image_size,
  linear in between, rounded to a multiple of size_multiple."""
  p, target = config.progressive, config.data.image_size
  if index == 0 or index == p.stages - 1:
    return p.min_image_size if index == 0 else target
  size = p.min_image_size + (target - p.min_image_size) * index / (p.stages - 1)
  return max(p.size_multiple, int(size / p.size_multiple + 0.5) * p.size_multiple)


def plan(config: ml_collections.ConfigDict, steps_per_epoch: int) -> list[Stage]:
  """The stages of a run (one stage, `config` itself, when progressive learning is off)."""
  epochs = config.train.num_epochs
  if not enabled(config):
    return [Stage(0, 0, epochs * steps_per_epoch, config)]
  check(config)
  count = config.progressive.stages
  # The stages' data share the run's stored copy (storage_size 0 derives it from the size).
  storage_size = Storage.from_config(config.data).size
  stages = []
  for i in range(count):
    stage = config.copy_and_resolve_references()
    stage.data.image_size = stage_size(config, i)
    stage.data.storage_size = storage_size or stage.data.storage_size
    for ramp, field in RAMPS.items():
      if ramp_values := config.progressive[ramp]:
        first, last = ramp_values
        _set(stage, field, float(first + (last - first) * i / (count - 1)))
    stages.append(Stage(i, i * epochs // count * steps_per_epoch,
                        (i + 1) * epochs // count * steps_per_epoch, stage))
  return stages


def stage_at(stages: list[Stage], step: int) -> Stage:
  """The stage training step `step` (0-based; the steps after the run, the last stage's)."""
  return next((s for s in stages if step < s.end_step), stages[-1])


class StagedIterator(grain.DatasetIterator):
  """The training batches of each stage in turn: each from the stage's own pipeline
  (data.train_iterator at its size and magnitude, started at the stage's first step),
  opened when the previous stage's steps are used up.

  get_state() -> {'step': the next batch's step, 'stage', 'iterator': that stage pipeline's
  state}; Grain's checkpoint handler saves it with the train state.
  """

  def __init__(self, stages: list[Stage], *, global_batch_size: int, seed: int):
    super().__init__()
    self._stages, self._batch_size, self._seed = stages, global_batch_size, seed
    self._step, self._stage, self._iterator = 0, None, None

  def _open(self, stage: Stage) -> None:
    self.close()
    logging.info("Progressive learning: %s.", stage.describe(len(self._stages)))
    self._iterator = data.train_iterator(stage.config.data, global_batch_size=self._batch_size,
                                         seed=self._seed, start_batch=stage.first_step)
    self._stage = stage

  def __next__(self) -> dict[str, Any]:
    stage = stage_at(self._stages, self._step)
    if stage is not self._stage:
      self._open(stage)
    batch = next(self._iterator)
    self._step += 1
    return batch

  def get_state(self) -> dict[str, Any]:
    if self._iterator is None:
      self._open(stage_at(self._stages, self._step))
    return {"step": self._step, "stage": self._stage.index, "iterator": self._iterator.get_state()}

  def set_state(self, state: dict[str, Any] | bytes) -> None:
    if isinstance(state, bytes):
      state = json.loads(state)
    if "stage" not in state:
      raise ConfigError("The checkpoint was written without progressive learning: resume it "
                        "with --config.progressive.stages=0, or start a new workdir.")
    self._open(self._stages[state["stage"]])
    self._iterator.set_state(state["iterator"])
    self._step = state["step"]

  def close(self) -> None:
    if self._iterator is not None:
      self._iterator.close()  # Its worker processes and their shared memory.
      self._iterator = None


def train_iterator(stages: list[Stage], *, global_batch_size: int,
                   seed: int) -> grain.DatasetIterator:
  """The run's training batches: data.train_iterator with one stage, else a StagedIterator."""
  if len(stages) == 1:
    return data.train_iterator(stages[0].config.data, global_batch_size=global_batch_size,
                               seed=seed)
  return StagedIterator(stages, global_batch_size=global_batch_size, seed=seed)


class StagedSteps:
  """The compiled steps of the stage in progress: its train step (built by `build` from the
  stage's config, when the stage starts) beside the run's eval step of `compiled`."""

  def __init__(self, stages: list[Stage], compiled: steps.CompiledSteps,
               build: Callable[[ml_collections.ConfigDict], steps.CompiledSteps]):
    self._stages, self._run, self._build = stages, compiled, build
    self._stage, self._compiled = None, compiled

  def at(self, step: int) -> steps.CompiledSteps:
    """The steps that train step `step` (the run's own with one stage)."""
    if len(self._stages) == 1:
      return self._run
    stage = stage_at(self._stages, step)
    if stage is not self._stage:
      built = self._build(stage.config)
      self._compiled = dataclasses.replace(self._run, train_step=built.train_step,
                                           mixing=built.mixing)
      self._stage = stage
    return self._compiled


def _get(config: ml_collections.ConfigDict, field: str) -> Any:
  section, name = field.split(".")
  return config[section][name]


def _set(config: ml_collections.ConfigDict, field: str, value: Any) -> None:
  section, name = field.split(".")
  config[section][name] = value
