"""Optimization: AdamW chain, weight-decay mask, layer-wise learning-rate decay, SAM's
perturbation, label-smoothed (soft-target) loss, LR schedule, plateau, early stop.

The optimizer is one `optax.inject_hyperparams` transformation, so its learning rate is
a value in the optimizer state that the train step sets each step to
`schedule(step) * plateau scale`; layer-wise decay then scales each block group's updates
by a constant. Reduce-on-plateau and early stopping run on the host
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

from efficientnet_jax import config_checks
from efficientnet_jax.errors import ConfigError

# Path components that mark a parameter as a BatchNorm scale/shift or a bias.
_NO_DECAY_NAMES = ("bias", "scale")
BACKBONE_FROZEN, TRAINABLE = "frozen", "trainable"
CLASSIFIER = "classifier"


def soft_targets(labels: jax.Array, num_classes: int, label_smoothing: float) -> jax.Array:
  """Label-smoothed one-hot targets [N, num_classes], float32: (1 - s) * one_hot + s / C."""
  return optax.smooth_labels(jax.nn.one_hot(labels, num_classes, dtype=jnp.float32), label_smoothing)


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-example softmax cross entropy against target distributions, in float32."""
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def cross_entropy_loss(logits: jax.Array, labels: jax.Array, label_smoothing: float) -> jax.Array:
  """Per-example label-smoothed softmax cross entropy, computed in float32."""
  return soft_cross_entropy(logits, soft_targets(labels, logits.shape[-1], label_smoothing))


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


def layer_groups(params: Any) -> tuple[Any, list[str]]:
  """(a tree of group names, the groups from input to output) of an EfficientNet's params.

  Groups: 'stem', one per stage ('stage0', 'stage1', ...), and 'head' (the head
  convolution and BatchNorm with the classifier).
  """
  names = [_path_names(path)[0] for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  unknown = sorted({n for n in names if n not in ("stem", "head", CLASSIFIER)
                    and not n.startswith("stages_")})
  if unknown:
    raise ConfigError(f"optim.layer_decay needs an EfficientNet's parameters (stem, stages_i_j, "
                     f"head, classifier); this model has {unknown}. Set optim.layer_decay=1.0.")

  def group(path, _):
    name = _path_names(path)[0]
    if name.startswith("stages_"):
      return f"stage{name.split('_')[1]}"
    return "stem" if name == "stem" else "head"

  stages = sorted({int(n.split("_")[1]) for n in names if n.startswith("stages_")})
  return (jax.tree_util.tree_map_with_path(group, params),
          ["stem", *(f"stage{i}" for i in stages), "head"])


def layer_decay_scales(params: Any, decay: float) -> tuple[Any, dict[str, float]]:
  """Learning-rate multipliers of layer-wise decay: (a tree like params, {group: scale}).

  The head's group takes the base rate; each group before it decay times the next one's,
  so of G groups the stem gets decay ** (G - 1).
  """
  config_checks.require_value("optim.layer_decay", decay)
  groups, order = layer_groups(params)
  scales = {g: decay ** (len(order) - 1 - i) for i, g in enumerate(order)}
  return jax.tree.map(scales.__getitem__, groups), scales


def sam_perturbation(grads: Any, params: Any, rho: float, adaptive: bool,
                     mask: Any | None = None) -> Any:
  """SAM's weight perturbation e(w) = rho * T^2 g / ||T g|| (T = |w| for adaptive SAM,
  else 1), in float32; leaves where `mask` is False are neither counted nor perturbed."""
  if mask is not None:
    grads = jax.tree.map(lambda g, m: g if m else jnp.zeros_like(g), grads, mask)
  scale = (lambda w: jnp.abs(w.astype(jnp.float32))) if adaptive else (lambda w: 1.0)
  scaled = jax.tree.map(lambda g, w: scale(w) * jnp.asarray(g, jnp.float32), grads, params)
  norm = optax.global_norm(scaled)
  return jax.tree.map(lambda t, w: (rho / (norm + 1e-12)) * scale(w) * t, scaled, params)


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
  raise ConfigError(
      f"Unknown schedule {optim.schedule!r} (config field optim.schedule); "
      "use 'constant' or 'warmup_cosine'.")


def trainable_mask(optim: ml_collections.ConfigDict, params: Any) -> Any | None:
  """A bool tree, True where the optimizer moves a parameter; None when it moves all."""
  if not optim.freeze_backbone:
    return None
  return jax.tree.map(lambda label: label == TRAINABLE, freeze_labels(params))


def create_optimizer(optim: ml_collections.ConfigDict, params: Any) -> optax.GradientTransformation:
  """[clip by global norm] -> AdamW (masked decay) [-> zero updates outside the classifier]
  [-> layer-wise decay: each group's updates times its scale (layer_decay_scales)].

  The learning rate lives in `opt_state.hyperparams['learning_rate']` (see set_learning_rate);
  layer-wise decay scales AdamW's whole update, weight decay included, as a per-group
  learning rate would.
  """
  mask = weight_decay_mask(params, optim.wd_exclude_bn_and_bias)
  labels = freeze_labels(params) if optim.freeze_backbone else None
  scales = None
  if optim.layer_decay != 1.0:
    scales, _ = layer_decay_scales(params, optim.layer_decay)

  def chain(learning_rate: float, weight_decay: float) -> optax.GradientTransformation:
    parts = []
    if optim.grad_clip_norm > 0:
      parts.append(optax.clip_by_global_norm(optim.grad_clip_norm))
    parts.append(optax.adamw(learning_rate, b1=optim.b1, b2=optim.b2, eps=optim.eps,
                             weight_decay=weight_decay, mask=mask))
    tx = optax.chain(*parts)
    if labels is not None:
      tx = optax.multi_transform({TRAINABLE: tx, BACKBONE_FROZEN: optax.set_to_zero()}, labels)
    if scales is not None:
      tx = optax.chain(tx, optax.stateless(
          lambda updates, _: jax.tree.map(lambda u, s: u * s, updates, scales)))
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
