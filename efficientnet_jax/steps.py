"""Pure train and eval steps over pytrees of model variables; the caller jits them.

The model is split once (`split_model`) into a static graph definition and state
pytrees; each step merges them back inside the trace, so no Python graph walk happens
per step. Images arrive as uint8 and are normalized on the device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from efficientnet_jax import metrics, optim


@flax.struct.dataclass
class EmaState:
  """Exponential moving averages of the parameters and BatchNorm statistics."""

  params: nnx.State
  batch_stats: nnx.State


@flax.struct.dataclass
class TrainState:
  """Everything a train step reads and writes; the graph definition stays outside."""

  step: jax.Array  # int32 scalar: optimizer steps taken.
  params: nnx.State  # nnx.Param variables.
  batch_stats: nnx.State  # nnx.BatchStat variables.
  rngs: nnx.State  # The rest: dropout / drop-path RNG streams.
  opt_state: optax.OptState
  lr_scale: jax.Array  # float32 scalar set by reduce-on-plateau between evaluations.
  ema: EmaState | None  # None when optim.ema_decay == 0.


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State, nnx.State]:
  """(graphdef, params, batch_stats, rngs): the model as a static part and three pytrees."""
  return nnx.split(model, nnx.Param, nnx.BatchStat, ...)


def create_train_state(model: nnx.Module, tx: optax.GradientTransformation,
                       ema_decay: float) -> tuple[nnx.GraphDef, TrainState]:
  """Splits `model` and initializes the optimizer (and EMA) state."""
  graphdef, params, batch_stats, rngs = split_model(model)
  state = TrainState(
      step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats, rngs=rngs,
      opt_state=tx.init(params), lr_scale=jnp.ones((), jnp.float32),
      # Copies: the EMA must not share buffers with the (donated) live weights.
      ema=EmaState(*jax.tree.map(jnp.copy, (params, batch_stats))) if ema_decay > 0 else None)
  return graphdef, state


def normalize(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """uint8 [N, H, W, C] -> float32 (x / 255 - mean) / std."""
  x = images.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    *,
    label_smoothing: float,
    mean: Sequence[float],
    std: Sequence[float],
    ema_decay: float,
) -> Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, metrics.TrainMetrics]]:
  """Returns train_step(state, batch) -> (state, metrics) for batch {'image', 'label'}."""

  def train_step(state: TrainState, batch: dict[str, jax.Array]):
    images = normalize(batch["image"], mean, std)
    labels = batch["label"]

    def loss_fn(params):
      model = nnx.merge(graphdef, params, state.batch_stats, state.rngs, copy=True)
      model.train()
      logits = model(images)
      losses = optim.cross_entropy_loss(logits, labels, label_smoothing)
      _, _, batch_stats, rngs = split_model(model)
      return losses.mean(), (logits, losses, batch_stats, rngs)

    grads, (logits, losses, batch_stats, rngs) = jax.grad(loss_fn, has_aux=True)(state.params)
    lr = schedule(state.step) * state.lr_scale
    opt_state = optim.set_learning_rate(state.opt_state, lr)
    updates, opt_state = tx.update(grads, opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state.ema
    if ema is not None:
      ema = EmaState(optim.ema_update(ema.params, params, ema_decay),
                     optim.ema_update(ema.batch_stats, batch_stats, ema_decay))
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              rngs=rngs, opt_state=opt_state, ema=ema)
    step_metrics = metrics.TrainMetrics.single_from_model_output(
        loss=losses, logits=logits, labels=labels, learning_rate=lr)
    return new_state, step_metrics

  return train_step


def make_eval_step(
    graphdef: nnx.GraphDef,
    *,
    label_smoothing: float,
    mean: Sequence[float],
    std: Sequence[float],
) -> Callable[..., metrics.EvalMetrics]:
  """Returns eval_step(params, batch_stats, rngs, batch) -> metrics.

  batch: {'image', 'label', 'mask'}; padded examples (mask False) count nowhere.
  The loss is the training objective (label-smoothed), so plateau sees what is optimized.
  """

  def eval_step(params: nnx.State, batch_stats: nnx.State, rngs: nnx.State,
                batch: dict[str, jax.Array]) -> metrics.EvalMetrics:
    model = nnx.merge(graphdef, params, batch_stats, rngs)
    model.eval()
    logits = model(normalize(batch["image"], mean, std))
    losses = optim.cross_entropy_loss(logits, batch["label"], label_smoothing)
    return metrics.EvalMetrics.single_from_model_output(
        loss=losses, logits=logits, labels=batch["label"], mask=batch["mask"])

  return eval_step


def variables_of(state: TrainState, use_ema: bool = False) -> tuple[nnx.State, nnx.State, nnx.State]:
  """(params, batch_stats, rngs) for eval_step: the trained or the EMA weights."""
  if use_ema:
    return state.ema.params, state.ema.batch_stats, state.rngs
  return state.params, state.batch_stats, state.rngs

