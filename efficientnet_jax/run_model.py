"""The model of a run: built from its config (with the pretrained weights it names), the input
convention it takes (resolved once), recorded in the workdir (model.json), and loaded back
from a finished or interrupted run (`load_trained`).

  trained = load_trained("runs/b0")                 # the best checkpoint
  logits = trained.model(trained.normalize(uint8_images))
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
from absl import logging
from flax import nnx

from efficientnet_jax import checkpoint, data, steps, summaries
from efficientnet_jax.models import EfficientNet, ModelOptions
from efficientnet_jax.weights.convention import InputConvention
from efficientnet_jax.errors import ConfigError, NotFoundError

MODEL_FILE = "model.json"
CONFIG_FILE = "config.json"  # The run's resolved config (summaries.write_run_info).
FORMAT = "efficientnet_jax.run_model/1"
INPUT_CONVENTIONS = ("weights", "config")
CHECKPOINTS = ("best", "latest")


def model_options(config: ml_collections.ConfigDict) -> ModelOptions:
  """config.model (and config.seed) as ModelOptions."""
  return ModelOptions(**config.model.to_dict(), seed=config.seed)


def build(config: ml_collections.ConfigDict) -> tuple[EfficientNet, InputConvention]:
  """The model of `config`, with config.pretrained loaded into it, and the input convention it
  takes (see input_convention)."""
  model = EfficientNet(model_options(config))
  weights_convention = None
  if config.pretrained:
    from efficientnet_jax import weights  # pylint: disable=g-import-not-at-top

    weights_convention = weights.load_pretrained(model, config.pretrained)
  convention = input_convention(config, weights_convention)
  if weights_convention is not None and config.train.input_convention == "weights":
    logging.info("Pretrained %s: input convention mean=%s std=%s interpolation=%s crop_pct=%s",
                 config.pretrained, convention.mean, convention.std, convention.interpolation,
                 convention.crop_pct)
  return model, convention


def input_convention(config: ml_collections.ConfigDict,
                     weights_convention: InputConvention | None = None) -> InputConvention:
  """What the run's model takes, with mean and std in units of pixels / 255.

  With pretrained weights and train.input_convention='weights', their normalization, eval
  interpolation and crop fraction; otherwise config.data's. Size and eval resize are
  config.data's.
  """
  if config.train.input_convention not in INPUT_CONVENTIONS:
    raise ConfigError(f"train.input_convention={config.train.input_convention!r}; "
                     f"choose one of {INPUT_CONVENTIONS}.")
  d = config.data
  if weights_convention is not None and config.train.input_convention == "weights":
    c = weights_convention.in_unit_range()
    mean, std, interpolation, crop_pct = c.mean, c.std, c.interpolation, c.crop_pct
  else:
    mean, std = data.normalization(d)
    interpolation, crop_pct = d.interpolation, d.crop_pct
  return InputConvention(mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std),
                         value_range=(0.0, 1.0), interpolation=interpolation,
                         crop_pct=float(crop_pct), image_size=d.image_size, resize=d.eval_resize)


def with_input(config: ml_collections.ConfigDict,
               convention: InputConvention) -> ml_collections.ConfigDict:
  """A copy of `config` whose data fields (mean/std, interpolation, crop) follow `convention`."""
  config = config.copy_and_resolve_references()
  d = config.data
  if d.channels == 3:
    d.mean, d.std = convention.mean, convention.std
  else:
    d.gray_mean, d.gray_std = convention.mean, convention.std
  d.interpolation, d.crop_pct = convention.interpolation, convention.crop_pct
  return config


def save(workdir: str, options: ModelOptions, convention: InputConvention,
         class_names: tuple[str, ...]) -> None:
  """Records what load_trained needs in <workdir>/model.json (process 0)."""
  summaries.write_json(os.path.join(workdir, MODEL_FILE), {
      "format": FORMAT, "model": options.to_json(), "input": convention.to_json(),
      "class_names": list(class_names)})


@dataclasses.dataclass(frozen=True)
class TrainedModel:
  """A trained model in evaluation mode, with what it needs to be used."""

  model: EfficientNet
  convention: InputConvention  # Mean/std in units of pixels / 255; eval resize and crop.
  class_names: tuple[str, ...]  # Label order.
  step: int  # The training step of the checkpoint.
  checkpoint: str  # 'best' or 'latest': where the checkpoint was found.
  ema: bool  # Whether these are the EMA weights.

  def normalize(self, images: Any) -> jax.Array:
    """uint8 [N, H, W, C] images -> the model's float32 input."""
    return steps.normalize(images, self.convention.mean, self.convention.std)


def is_workdir(path: str) -> bool:
  """Whether `path` is a training run's workdir (it holds model.json)."""
  return os.path.isfile(os.path.join(path, MODEL_FILE))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config run `workdir` was trained with (its config.json)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: {workdir!r} is not a training workdir, or its "
                            "run has not started (config.json is written when training starts).")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def read_model_file(workdir: str) -> dict[str, Any]:
  path = os.path.join(workdir, MODEL_FILE)
  if not os.path.isfile(path):
    raise NotFoundError(
        f"{path} not found: {workdir!r} is not a training workdir, or its run has not started "
        "(model.json is written when training starts).")
  with open(path) as f:
    info = json.load(f)
  if info.get("format") != FORMAT:
    raise ConfigError(f"{path}: format {info.get('format')!r} is not {FORMAT!r}.")
  return info


def load_trained(workdir: str, which: str | int = "best", *, ema: bool = False,
                 depthwise: str | None = None) -> TrainedModel:
  """The model of run `workdir` with the weights of a checkpoint.

  which: 'best' (highest validation top-1), 'latest', or a step number (looked up among
  the latest, then the best checkpoints). ema: the EMA weights (the run must keep an EMA).
  depthwise: the depthwise implementation to build with (e.g. 'conv', portable); None: the
  run's own model.depthwise.
  """
  info = read_model_file(workdir)
  options = ModelOptions(**{**info["model"], "depthwise": depthwise or info["model"]["depthwise"]})
  model = EfficientNet(options)
  _, params, batch_stats, _ = steps.split_model(model)
  kind, step = checkpoint.find_step(workdir, which)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                        steps.Variables(params, batch_stats))
  variables = checkpoint.read_variables(workdir, kind, step, target, ema=ema)
  weights = variables.weights(ema=ema)
  nnx.update(model, weights.params, weights.batch_stats)
  model.eval()
  convention = InputConvention.from_json(info["input"])
  return TrainedModel(model=model, convention=convention,
                      class_names=tuple(info["class_names"]), step=step, checkpoint=kind, ema=ema)

