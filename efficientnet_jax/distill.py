"""Knowledge distillation (config.distill): a frozen teacher evaluated inside the train step.

The teacher sees the same augmented (and mixed) batch as the student, normalized by its
own mean/std and resized on the device (bilinear) when its resolution differs. The loss
per example is (1 - alpha) * cross entropy with the (smoothed, mixed) targets
+ alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)): the KL term is 0 at
its minimum, whatever the teacher's entropy.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from efficientnet_jax import config_checks
from efficientnet_jax.errors import ConfigError, NotFoundError
from efficientnet_jax.models import EfficientNet, ModelOptions


@dataclasses.dataclass(frozen=True)
class Teacher:
  """A frozen teacher (evaluation mode), its input normalization and resolution, and the
  loss weights."""

  model: EfficientNet
  mean: Sequence[float]  # In units of pixels / 255.
  std: Sequence[float]
  image_size: int  # The batch is resized to this side when it differs.
  alpha: float  # Weight of the distillation term; 1 - alpha on the label cross entropy.
  temperature: float


def kd_loss(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float) -> jax.Array:
  """Per-example T^2 * KL(softmax(teacher / T) || softmax(student / T)), in float32."""
  t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature)
  s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature)
  return temperature**2 * jnp.sum(jnp.exp(t) * (t - s), axis=-1)


def resize(images: jax.Array, size: int) -> jax.Array:
  """[N, H, W, C] -> [N, size, size, C] (bilinear, antialiased when shrinking); as is when equal."""
  n, h, w, c = images.shape
  if (h, w) == (size, size):
    return images
  return jax.image.resize(images, (n, size, size, c), "bilinear")


def with_compute(model: EfficientNet, dtype: str, depthwise: str) -> EfficientNet:
  """`model`'s weights in a model computing in `dtype` with `depthwise`, in evaluation mode."""
  rebuilt = EfficientNet(dataclasses.replace(model.options, dtype=dtype, depthwise=depthwise))
  nnx.update(rebuilt, nnx.state(model, (nnx.Param, nnx.BatchStat)))
  rebuilt.eval()
  return rebuilt


def load_teacher(cfg: ml_collections.ConfigDict, student: ModelOptions) -> Teacher | None:
  """The teacher of config.distill for a student with options `student`; None without one.

  distill.teacher: a training workdir (its best checkpoint, the EMA weights with
  distill.teacher_ema), converted weights, a PyTorch checkpoint or a known weights name.
  The teacher computes in the student's dtype and depthwise implementation.
  """
  if not cfg.teacher:
    return None
  config_checks.require_section("distill", cfg)
  from efficientnet_jax import run_model, weights  # pylint: disable=g-import-not-at-top

  if os.path.isfile(os.path.join(cfg.teacher, run_model.MODEL_FILE)):
    trained = run_model.load_trained(cfg.teacher, "best", ema=cfg.teacher_ema)
    model, convention = trained.model, trained.convention
  elif not (os.path.exists(cfg.teacher) or cfg.teacher in weights.KNOWN_WEIGHTS):
    raise NotFoundError(
        f"distill.teacher={cfg.teacher!r} is neither a training workdir (with "
        f"{run_model.MODEL_FILE}), converted weights, a checkpoint file nor a known weights name.")
  else:
    model, convention = weights.create_pretrained(cfg.teacher, in_channels=student.in_channels)
    convention = convention.in_unit_range()
  if model.num_classes != student.num_classes:
    raise ConfigError(f"distill.teacher={cfg.teacher!r} predicts {model.num_classes} classes, the "
                     f"student (model.num_classes) {student.num_classes}: use a teacher trained "
                     "on the same classes.")
  if model.in_channels != student.in_channels:
    raise ConfigError(f"distill.teacher={cfg.teacher!r} takes {model.in_channels} channel(s), the "
                     f"student (model.in_channels) {student.in_channels}.")
  return Teacher(model=with_compute(model, student.dtype, student.depthwise),
                 mean=convention.mean, std=convention.std,
                 image_size=cfg.image_size or convention.image_size, alpha=float(cfg.alpha),
                 temperature=float(cfg.temperature))
