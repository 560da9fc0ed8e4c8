"""The compiled train and eval steps, built once by `build` for training, the benchmarks and
the tests alike, and the state they carry.

The model is split once into a static graph definition and state pytrees; each step merges
them back inside the trace, so no Python graph walk happens per step. Images arrive as
uint8 and are normalized on the device. Parameters and optimizer state are replicated over
the mesh's 'data' axis, batches are split along it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh

from efficientnet_jax import metrics, optim, parallel

Batch = dict[str, jax.Array]
TTA_MODES = ("none", "flip")  # Test-time augmentation: none, or the image and its horizontal flip.


@flax.struct.dataclass
class Variables:
  """A model's weights: parameters and BatchNorm statistics, and optionally their
  exponential moving average (Variables without an EMA of their own)."""

  params: nnx.State  # nnx.Param variables.
  batch_stats: nnx.State  # nnx.BatchStat variables.
  ema: Variables | None = None

  def weights(self, ema: bool = False) -> Variables:
    """The trained or the EMA weights, without an EMA: what evaluation takes."""
    if not ema:
      return self.replace(ema=None)
    if self.ema is None:
      raise ValueError("These variables have no EMA (optim.ema_decay was 0).")
    return self.ema


@flax.struct.dataclass
class TrainState:
  """Everything a train step reads and writes; the graph definition stays outside."""

  step: jax.Array  # int32 scalar: optimizer steps taken.
  variables: Variables  # With an EMA when optim.ema_decay > 0.
  rngs: nnx.State  # The rest of the model: dropout / drop-path RNG streams.
  opt_state: optax.OptState
  lr_scale: jax.Array  # float32 scalar set by reduce-on-plateau between evaluations.

  @classmethod
  def from_legacy(cls, tree: dict[str, Any]) -> TrainState:
    """A state from a checkpoint of the layout before Variables (weights as top-level fields)."""
    ema = tree.get("ema")
    return cls(step=tree["step"], rngs=tree["rngs"], opt_state=tree["opt_state"],
               lr_scale=tree["lr_scale"],
               variables=Variables(tree["params"], tree["batch_stats"],
                                   None if ema is None else Variables(**ema)))

  def legacy(self) -> dict[str, Any]:
    """This state in the layout before Variables (the target to restore such a checkpoint)."""
    v = self.variables
    tree = {"step": self.step, "params": v.params, "batch_stats": v.batch_stats,
            "rngs": self.rngs, "opt_state": self.opt_state, "lr_scale": self.lr_scale}
    if v.ema is not None:
      tree["ema"] = {"params": v.ema.params, "batch_stats": v.ema.batch_stats}
    return tree


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State, nnx.State]:
  """(graphdef, params, batch_stats, rngs): the model as a static part and three pytrees."""
  return nnx.split(model, nnx.Param, nnx.BatchStat, ...)


def normalize(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """uint8 [N, H, W, C] -> float32 (x / 255 - mean) / std."""
  x = images.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def check_tta(tta: str) -> str:
  """`tta` if it is one of TTA_MODES."""
  if tta not in TTA_MODES:
    raise ValueError(f"Unknown test-time augmentation tta={tta!r}; use one of {TTA_MODES}.")
  return tta


def tta_views(model: nnx.Module, images: jax.Array, tta: str = "none") -> jax.Array:
  """Logits [V, N, classes] of each test-time view of normalized NHWC `images`, view 0 the
  images as given: 'none' one view, 'flip' also their horizontal flips (one forward pass)."""
  if check_tta(tta) == "none":
    return model(images)[None]
  return model(jnp.concatenate([images, images[:, :, ::-1]])).reshape(2, images.shape[0], -1)


def combine_views(views: jax.Array) -> jax.Array:
  """The logits of several views [V, N, classes]: log of their mean softmax probabilities
  (a single view's logits unchanged)."""
  if views.shape[0] == 1:
    return views[0]
  return jax.nn.logsumexp(jax.nn.log_softmax(views, axis=-1), axis=0) - jnp.log(views.shape[0])


@dataclasses.dataclass(frozen=True)
class CompiledSteps:
  """The jitted steps of one model on one mesh (see `build`).

  train(state, batch) -> (state, TrainMetrics): one optimizer step on a global batch
  {'image' uint8, 'label'}; `state` is donated. evaluate(weights, batch) -> EvalMetrics
  on {'image', 'label', 'mask'}: padded examples (mask False) count nowhere, and the loss
  is the training objective (label-smoothed), so plateau sees what is optimized.
  """

  graphdef: nnx.GraphDef
  rngs: nnx.State  # The model's RNG streams as built; evaluation does not draw from them.
  mesh: Mesh
  train: Callable[[TrainState, Batch], tuple[TrainState, metrics.TrainMetrics]]
  eval_step: Callable[..., metrics.EvalMetrics]

  def evaluate(self, weights: Variables, batch: Batch) -> metrics.EvalMetrics:
    return self.eval_step(weights.params, weights.batch_stats, self.rngs, batch)

  def model(self, weights: Variables) -> nnx.Module:
    """The model with `weights`, in evaluation mode (eager use, e.g. tests)."""
    model = nnx.merge(self.graphdef, weights.params, weights.batch_stats, self.rngs)
    model.eval()
    return model


def build(model: nnx.Module, optim_config: ml_collections.ConfigDict, mesh: Mesh, *,
          mean: Sequence[float], std: Sequence[float], steps_per_epoch: int,
          num_epochs: int, tta: str = "none") -> tuple[CompiledSteps, TrainState]:
  """The compiled steps of `model` trained by `optim_config` (config.optim) on `mesh`, and
  the initial train state replicated over it.

  mean/std: the input normalization (x / 255 - mean) / std. steps_per_epoch and num_epochs
  set the learning-rate schedule. tta: the eval step's test-time augmentation (TTA_MODES):
  'flip' scores the log of the mean softmax of each image and its horizontal flip.
  """
  graphdef, params, batch_stats, rngs = split_model(model)
  tx = optim.create_optimizer(optim_config, params)
  schedule = optim.learning_rate_schedule(optim_config, steps_per_epoch, num_epochs)
  ema_decay = optim_config.ema_decay
  # Copies: the EMA must not share buffers with the (donated) live weights.
  ema = Variables(*jax.tree.map(jnp.copy, (params, batch_stats))) if ema_decay > 0 else None
  state = TrainState(step=jnp.zeros((), jnp.int32), variables=Variables(params, batch_stats, ema),
                     rngs=rngs, opt_state=tx.init(params), lr_scale=jnp.ones((), jnp.float32))
  repl = parallel.replicated(mesh)
  train = jax.jit(
      _train_step(graphdef, tx, schedule, label_smoothing=optim_config.label_smoothing,
                  mean=mean, std=std, ema_decay=ema_decay),
      donate_argnums=0, out_shardings=(repl, repl))
  eval_step = jax.jit(
      _eval_step(graphdef, label_smoothing=optim_config.label_smoothing, mean=mean, std=std,
                 tta=check_tta(tta)),
      out_shardings=repl)
  compiled = CompiledSteps(graphdef, parallel.replicate(rngs, mesh), mesh, train, eval_step)
  return compiled, parallel.replicate(state, mesh)


def _train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                schedule: optax.Schedule, *, label_smoothing: float, mean: Sequence[float],
                std: Sequence[float], ema_decay: float):
  """train_step(state, batch) -> (state, metrics) for batch {'image', 'label'}."""

  def train_step(state: TrainState, batch: Batch):
    images = normalize(batch["image"], mean, std)
    labels = batch["label"]
    variables = state.variables

    def loss_fn(params):
      model = nnx.merge(graphdef, params, variables.batch_stats, state.rngs, copy=True)
      model.train()
      logits = model(images)
      losses = optim.cross_entropy_loss(logits, labels, label_smoothing)
      _, _, batch_stats, rngs = split_model(model)
      return losses.mean(), (logits, losses, batch_stats, rngs)

    grads, (logits, losses, batch_stats, rngs) = jax.grad(loss_fn, has_aux=True)(variables.params)
    lr = schedule(state.step) * state.lr_scale
    opt_state = optim.set_learning_rate(state.opt_state, lr)
    updates, opt_state = tx.update(grads, opt_state, variables.params)
    params = optax.apply_updates(variables.params, updates)
    ema = variables.ema
    if ema is not None:
      ema = Variables(optim.ema_update(ema.params, params, ema_decay),
                      optim.ema_update(ema.batch_stats, batch_stats, ema_decay))
    new_state = state.replace(step=state.step + 1, variables=Variables(params, batch_stats, ema),
                              rngs=rngs, opt_state=opt_state)
    # A reduction over the new parameters: a diverging run stops at its first bad step.
    finite = jnp.isfinite(losses.mean()) & jax.tree.reduce(
        lambda ok, p: ok & jnp.all(jnp.isfinite(p)), params, jnp.bool_(True))
    step_metrics = metrics.TrainMetrics.single_from_model_output(
        loss=losses, logits=logits, labels=labels, learning_rate=lr, finite=finite,
        step=state.step + 1)
    return new_state, step_metrics

  return train_step


def _eval_step(graphdef: nnx.GraphDef, *, label_smoothing: float, mean: Sequence[float],
               std: Sequence[float], tta: str = "none"):
  """eval_step(params, batch_stats, rngs, batch) -> metrics."""

  def eval_step(params: nnx.State, batch_stats: nnx.State, rngs: nnx.State,
                batch: Batch) -> metrics.EvalMetrics:
    model = nnx.merge(graphdef, params, batch_stats, rngs)
    model.eval()
    logits = combine_views(tta_views(model, normalize(batch["image"], mean, std), tta))
    losses = optim.cross_entropy_loss(logits, batch["label"], label_smoothing)
    return metrics.EvalMetrics.single_from_model_output(
        loss=losses, logits=logits, labels=batch["label"], mask=batch["mask"])

  return eval_step
