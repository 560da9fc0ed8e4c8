"""Optimization: AdamW chain, weight-decay mask, label-smoothed loss, LR schedule, plateau, early stop.

The optimizer is one `optax.inject_hyperparams` transformation, so its learning rate is
a value in the optimizer state that the train step sets each step to
`schedule(step) * plateau scale`. Reduce-on-plateau and early stopping run on the host
once per evaluation, as small explicit dataclasses saved with every checkpoint; they
follow PyTorch's ReduceLROnPlateau (mode 'min', threshold_mode 'rel') and Lightning's
EarlyStopping, as the seed recipe did.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

# Path components that mark a parameter as a BatchNorm scale/shift or a bias.
_NO_DECAY_NAMES = ("bias", "scale")
BACKBONE_FROZEN, TRAINABLE = "frozen", "trainable"
CLASSIFIER = "classifier"


def cross_entropy_loss(logits: jax.Array, labels: jax.Array, label_smoothing: float) -> jax.Array:
  """Per-example label-smoothed softmax cross entropy, computed in float32."""
  num_classes = logits.shape[-1]
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes, dtype=jnp.float32), label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def _path_names(path: tuple[Any, ...]) -> list[str]:
  """The names along a parameter's path, without the nnx Variable's trailing `.value`."""
  return [str(getattr(k, "key", getattr(k, "name", k))) for k in path
          if not isinstance(k, jax.tree_util.GetAttrKey)]


def weight_decay_mask(params: Any, exclude_bn_and_bias: bool) -> Any:
  """A bool tree: True where weight decay applies (kernels; everything if not excluding)."""

  def decays(path, _):
    return not (exclude_bn_and_bias and _path_names(path)[-1] in _NO_DECAY_NAMES)

  return jax.tree_util.tree_map_with_path(decays, params)


def freeze_labels(params: Any) -> Any:
  """'trainable' for the classifier, 'frozen' for the backbone (multi_transform labels)."""

  def label(path, _):
    return TRAINABLE if _path_names(path)[0] == CLASSIFIER else BACKBONE_FROZEN

  return jax.tree_util.tree_map_with_path(label, params)


def learning_rate_schedule(optim: ml_collections.ConfigDict, steps_per_epoch: int,
                           num_epochs: int) -> Callable[[jax.Array], jax.Array]:
  """The base learning rate per step: 'constant' or 'warmup_cosine' (linear warmup, cosine decay)."""
  if optim.schedule == "constant":
    return optax.constant_schedule(optim.lr)
  if optim.schedule == "warmup_cosine":
    warmup = int(round(optim.warmup_epochs * steps_per_epoch))
    total = max(num_epochs * steps_per_epoch, warmup + 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=optim.lr, warmup_steps=warmup, decay_steps=total,
        end_value=optim.cosine_end_lr)
  raise ValueError(
      f"Unknown schedule {optim.schedule!r} (config field optim.schedule); "
      "use 'constant' or 'warmup_cosine'.")


def create_optimizer(optim: ml_collections.ConfigDict, params: Any) -> optax.GradientTransformation:
  """[clip by global norm] -> AdamW (masked decay) [-> zero updates outside the classifier].

  The learning rate lives in `opt_state.hyperparams['learning_rate']` (see set_learning_rate).
  """
  mask = weight_decay_mask(params, optim.wd_exclude_bn_and_bias)
  labels = freeze_labels(params) if optim.freeze_backbone else None

  def chain(learning_rate: float, weight_decay: float) -> optax.GradientTransformation:
    parts = []
    if optim.grad_clip_norm > 0:
      parts.append(optax.clip_by_global_norm(optim.grad_clip_norm))
    parts.append(optax.adamw(learning_rate, b1=optim.b1, b2=optim.b2, eps=optim.eps,
                             weight_decay=weight_decay, mask=mask))
    tx = optax.chain(*parts)
    if labels is not None:
      tx = optax.multi_transform({TRAINABLE: tx, BACKBONE_FROZEN: optax.set_to_zero()}, labels)
    return tx

  return optax.inject_hyperparams(chain)(learning_rate=optim.lr, weight_decay=optim.weight_decay)


def set_learning_rate(opt_state: Any, learning_rate: jax.Array) -> Any:
  """Returns `opt_state` (from create_optimizer) with its learning rate replaced."""
  hyperparams = dict(opt_state.hyperparams)
  hyperparams["learning_rate"] = jnp.asarray(learning_rate, hyperparams["learning_rate"].dtype)
  return opt_state._replace(hyperparams=hyperparams)


def ema_update(ema: Any, new: Any, decay: float) -> Any:
  """Exponential moving average of float leaves: decay * ema + (1 - decay) * new."""
  return jax.tree.map(lambda e, n: decay * e + (1.0 - decay) * n, ema, new)


@dataclasses.dataclass
class Plateau:
  """Reduce-on-plateau on a monitored value that should decrease (validation loss).

  An evaluation improves when value < best * (1 - threshold). After `patience + 1`
  evaluations in a row without improvement (outside cooldown), scale *= factor, not
  below min_lr / base lr; then `cooldown` evaluations are ignored.
  """

  factor: float
  patience: int
  threshold: float
  cooldown: int
  min_scale: float
  scale: float = 1.0
  best: float = math.inf
  num_bad: int = 0
  cooldown_left: int = 0
  STATE = ("scale", "best", "num_bad", "cooldown_left")  # What a checkpoint restores.

  @classmethod
  def from_config(cls, optim: ml_collections.ConfigDict) -> Plateau:
    p = optim.plateau
    return cls(factor=p.factor, patience=p.patience, threshold=p.threshold,
               cooldown=p.cooldown, min_scale=p.min_lr / optim.lr)

  def update(self, value: float) -> bool:
    """Records one evaluation; returns True when the scale was reduced."""
    if value < self.best * (1.0 - self.threshold):
      self.best, self.num_bad = value, 0
    else:
      self.num_bad += 1
    if self.cooldown_left > 0:
      self.cooldown_left -= 1
      self.num_bad = 0
    if self.num_bad > self.patience:
      new_scale = max(self.scale * self.factor, self.min_scale)
      self.cooldown_left, self.num_bad = self.cooldown, 0
      if new_scale < self.scale:
        self.scale = new_scale
        return True
    return False


@dataclasses.dataclass
class EarlyStopping:
  """Stops when the monitored value (validation loss) has not decreased by more than
  `min_delta` for `patience` evaluations in a row."""

  patience: int
  min_delta: float
  best: float = math.inf
  num_bad: int = 0
  STATE = ("best", "num_bad")  # What a checkpoint restores.

  @classmethod
  def from_config(cls, optim: ml_collections.ConfigDict) -> EarlyStopping:
    return cls(patience=optim.early_stopping.patience, min_delta=optim.early_stopping.min_delta)

  def update(self, value: float) -> bool:
    """Records one evaluation; returns True when training should stop."""
    if value < self.best - self.min_delta:
      self.best, self.num_bad = value, 0
    else:
      self.num_bad += 1
    return self.num_bad >= self.patience
