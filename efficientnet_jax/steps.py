"""The compiled train and eval steps, built once by `build` for training, the benchmarks and
the tests alike, and the state they carry.

The model is split once into a static graph definition and state pytrees; each step merges
them back inside the trace, so no Python graph walk happens per step. Images arrive as
uint8 and are normalized on the device. Parameters and optimizer state are replicated over
the mesh's 'data' axis, batches are split along it.

One train step is one optimizer step, whatever it does inside: Mixup/CutMix on the batch
(mixup.py), gradient accumulation over micro-batches (a scan; BatchNorm statistics per
micro-batch), a frozen distillation teacher (distill.py), and SAM's second gradient. The
schedule, plateau, EMA, checkpoints and the data iterator all count these steps, and a
step is atomic: a run cannot stop (or resume) in the middle of an accumulation.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from efficientnet_jax import config_checks, distill, metrics, mixup, optim, parallel
from efficientnet_jax.errors import ConfigError

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
    raise ConfigError(f"Unknown test-time augmentation tta={tta!r}; use one of {TTA_MODES}.")
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
  is the training objective on clean images (label-smoothed cross entropy, without mixing
  or distillation), which plateau watches.
  """

  graphdef: nnx.GraphDef
  rngs: nnx.State  # The model's RNG streams as built; evaluation does not draw from them.
  mesh: Mesh
  train_step: Callable[..., tuple[TrainState, metrics.TrainMetrics]]  # (state, batch, teacher).
  eval_step: Callable[..., metrics.EvalMetrics]
  teacher: tuple[nnx.State, ...] | None = None  # The frozen teacher's variables, replicated.
  mixing: mixup.Mixing | None = None
  lr_scales: dict[str, float] | None = None  # Layer-wise decay: {group: learning-rate scale}.

  def train(self, state: TrainState, batch: Batch) -> tuple[TrainState, metrics.TrainMetrics]:
    return self.train_step(state, batch, self.teacher)

  def evaluate(self, weights: Variables, batch: Batch) -> metrics.EvalMetrics:
    return self.eval_step(weights.params, weights.batch_stats, self.rngs, batch)

  def model(self, weights: Variables) -> nnx.Module:
    """The model with `weights`, in evaluation mode (eager use, e.g. tests)."""
    model = nnx.merge(self.graphdef, weights.params, weights.batch_stats, self.rngs)
    model.eval()
    return model

  def train_scalars(self, train_metrics: metrics.TrainMetrics) -> dict[str, float]:
    """TensorBoard's train/* scalars, with each layer-decay group's rate as train/lr/<group>."""
    scalars = metrics.scalars(train_metrics, "train")
    for group, scale in (self.lr_scales or {}).items():
      scalars[f"train/lr/{group}"] = scalars["train/learning_rate"] * scale
    return scalars

  def model_view(self, images: np.ndarray, labels: np.ndarray, step: int) -> np.ndarray:
    """What the train step at `step` feeds the model from this process's batch: uint8
    images after the on-device mixing (for the TensorBoard sample grid)."""
    if self.mixing is None:
      return np.asarray(images)
    mixed = self.mixing(jnp.asarray(images), jnp.asarray(labels), jnp.int32(step),
                        num_shards=self.mesh.devices.size // jax.process_count())
    return np.asarray(jnp.clip(jnp.round(mixed.images), 0, 255)).astype(np.uint8)


def build(model: nnx.Module, optim_config: ml_collections.ConfigDict, mesh: Mesh, *,
          mean: Sequence[float], std: Sequence[float], steps_per_epoch: int,
          num_epochs: int, accumulate_steps: int = 1,
          mixup_config: ml_collections.ConfigDict | None = None,
          teacher: distill.Teacher | None = None, seed: int = 0,
          tta: str = "none") -> tuple[CompiledSteps, TrainState]:
  """The compiled steps of `model` trained by `optim_config` (config.optim) on `mesh`, and
  the initial train state replicated over it.

  mean/std: the input normalization (x / 255 - mean) / std. steps_per_epoch and num_epochs
  set the learning-rate schedule. accumulate_steps (config.train.accumulate_steps): micro-
  batches per optimizer step. mixup_config: config.mixup (None: no mixing). teacher: a
  distillation teacher (distill.load_teacher). seed: config.seed, for the mixing draws.
  tta: the eval step's test-time augmentation (TTA_MODES): 'flip' scores the log of the
  mean softmax of each image and its horizontal flip.
  """
  config_checks.require_value("train.accumulate_steps", accumulate_steps)
  config_checks.require_value("optim.sam_rho", optim_config.sam_rho)
  graphdef, params, batch_stats, rngs = split_model(model)
  tx = optim.create_optimizer(optim_config, params)
  schedule = optim.learning_rate_schedule(optim_config, steps_per_epoch, num_epochs)
  ema_decay = optim_config.ema_decay
  # Copies: the EMA must not share buffers with the (donated) live weights.
  ema = Variables(*jax.tree.map(jnp.copy, (params, batch_stats))) if ema_decay > 0 else None
  state = TrainState(step=jnp.zeros((), jnp.int32), variables=Variables(params, batch_stats, ema),
                     rngs=rngs, opt_state=tx.init(params), lr_scale=jnp.ones((), jnp.float32))
  mixing = None
  if mixup_config is not None:
    mixing = mixup.Mixing.from_config(mixup_config, steps_per_epoch=steps_per_epoch, seed=seed)
  lr_scales = None
  if optim_config.layer_decay != 1.0:
    _, lr_scales = optim.layer_decay_scales(params, optim_config.layer_decay)
  teacher_graph = teacher_vars = None
  if teacher is not None:
    teacher_graph, *teacher_state = split_model(teacher.model)
    teacher_vars = parallel.replicate(tuple(teacher_state), mesh)
  objective = _Objective(
      graphdef, label_smoothing=optim_config.label_smoothing, mean=mean, std=std,
      teacher=teacher, teacher_graph=teacher_graph)
  repl = parallel.replicated(mesh)
  train = jax.jit(
      _train_step(objective, tx, schedule, mesh, accumulate_steps=accumulate_steps,
                  mixing=mixing, ema_decay=ema_decay, sam_rho=optim_config.sam_rho,
                  sam_adaptive=optim_config.sam_adaptive,
                  sam_mask=optim.trainable_mask(optim_config, params)),
      donate_argnums=0, out_shardings=(repl, repl))
  eval_step = jax.jit(
      _eval_step(graphdef, label_smoothing=optim_config.label_smoothing, mean=mean, std=std,
                 tta=check_tta(tta)),
      out_shardings=repl)
  compiled = CompiledSteps(graphdef, parallel.replicate(rngs, mesh), mesh, train, eval_step,
                           teacher_vars, mixing, lr_scales)
  return compiled, parallel.replicate(state, mesh)


@dataclasses.dataclass(frozen=True)
class _Objective:
  """The training loss of one (micro-)batch, and the teacher's logits it may need."""

  graphdef: nnx.GraphDef
  label_smoothing: float
  mean: Sequence[float]
  std: Sequence[float]
  teacher: distill.Teacher | None
  teacher_graph: nnx.GraphDef | None

  def teacher_logits(self, teacher_vars: tuple[nnx.State, ...], pixels: jax.Array) -> jax.Array:
    """The frozen teacher's logits on pixels [N, H, W, C] (uint8, or float in [0, 255])."""
    t = self.teacher
    model = nnx.merge(self.teacher_graph, *teacher_vars)
    model.eval()
    x = distill.resize(normalize(pixels, t.mean, t.std), t.image_size)
    return jax.lax.stop_gradient(model(x))

  def __call__(self, params: nnx.State, batch_stats: nnx.State, rngs: nnx.State,
               micro: Batch, lam: jax.Array | None):
    """(mean loss, (logits, per-example losses, batch_stats, rngs)) in training mode.

    micro: {'x': normalized images, 'label'[, 'partner_label' (mixing: the target is
    lam * own + (1 - lam) * partner's smoothed one-hot)][, 'teacher_logits']}.
    """
    model = nnx.merge(self.graphdef, params, batch_stats, rngs, copy=True)
    model.train()
    logits = model(micro["x"])
    targets = mixup.targets(micro["label"], micro.get("partner_label"), lam, logits.shape[-1],
                            self.label_smoothing)
    losses = optim.soft_cross_entropy(logits, targets)
    if self.teacher is not None:
      kd = distill.kd_loss(logits, micro["teacher_logits"], self.teacher.temperature)
      losses = (1.0 - self.teacher.alpha) * losses + self.teacher.alpha * kd
    _, _, batch_stats, rngs = split_model(model)
    return losses.mean(), (logits, losses, batch_stats, rngs)


def _micro_batches(tree: Batch, k: int, mesh: Mesh) -> Batch:
  """[B, ...] leaves -> [k, B / k, ...]: micro-batch j takes rows j*m..(j+1)*m-1 of each
  device's shard of k*m rows (no data crosses devices)."""
  devices = mesh.devices.size

  def split(x):
    b = x.shape[0]
    if b % (devices * k):
      raise ValueError(f"train.batch_size={b} must be a multiple of train.accumulate_steps={k} "
                       f"times the device count ({devices}).")
    m = b // (devices * k)
    x = x.reshape(devices, k, m, *x.shape[1:]).swapaxes(0, 1).reshape(k, devices * m, *x.shape[1:])
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(None, parallel.DATA_AXIS)))

  return jax.tree.map(split, tree)


def _train_step(objective: _Objective, tx: optax.GradientTransformation,
                schedule: optax.Schedule, mesh: Mesh, *, accumulate_steps: int,
                mixing: mixup.Mixing | None, ema_decay: float, sam_rho: float,
                sam_adaptive: bool, sam_mask: Any):
  """train_step(state, batch, teacher_vars) -> (state, metrics) for batch {'image', 'label'}."""
  k = accumulate_steps
  grad_fn = jax.grad(objective, has_aux=True)

  def gradients(params, batch_stats, rngs, micro, lam):
    """The mean gradient over the micro-batches (leaves [k, B / k, ...] when k > 1), with
    every example's logits and loss.

    BatchNorm takes its statistics per micro-batch and updates its running averages once
    per micro-batch (k times per step), as PyTorch does when accumulating.
    """
    if k == 1:
      grads, (logits, losses, batch_stats, rngs) = grad_fn(params, batch_stats, rngs, micro, lam)
      return grads, logits, losses, batch_stats, rngs

    def body(carry, xs):
      grad_sum, batch_stats, rngs = carry
      grads, (logits, losses, batch_stats, rngs) = grad_fn(params, batch_stats, rngs, xs, lam)
      return (jax.tree.map(jnp.add, grad_sum, grads), batch_stats, rngs), (logits, losses)

    zeros = jax.tree.map(jnp.zeros_like, params)
    (grad_sum, batch_stats, rngs), (logits, losses) = jax.lax.scan(
        body, (zeros, batch_stats, rngs), micro)
    grads = jax.tree.map(lambda g: g / k, grad_sum)
    return grads, logits.reshape(-1, logits.shape[-1]), losses.reshape(-1), batch_stats, rngs

  def train_step(state: TrainState, batch: Batch, teacher_vars: tuple[nnx.State, ...] | None):
    variables = state.variables
    pixels, labels, lam = batch["image"], batch["label"], None
    micro = {"label": labels}
    if mixing is not None:
      mixed = mixing(pixels, labels, state.step, num_shards=mesh.devices.size)
      pixels, lam = mixed.images, mixed.lam
      micro["partner_label"] = mixed.partner_labels
    micro["x"] = normalize(pixels, objective.mean, objective.std)
    if k > 1:  # From here on every batch leaf is [k, B / k, ...].
      micro, pixels = _micro_batches((micro, pixels), k, mesh)
    if objective.teacher is not None:
      # One teacher pass per step (SAM's second pass reuses it), a micro-batch at a time.
      teacher_logits = functools.partial(objective.teacher_logits, teacher_vars)
      micro["teacher_logits"] = jax.lax.map(teacher_logits, pixels) if k > 1 else teacher_logits(pixels)
    grads, logits, losses, batch_stats, rngs = gradients(
        variables.params, variables.batch_stats, state.rngs, micro, lam)
    if sam_rho > 0:
      # SAM: the gradient at the weights perturbed along the (global, mean over the mesh)
      # gradient, on the same batch with the same dropout draws; BatchNorm's running
      # averages and the metrics are the first pass's.
      e = optim.sam_perturbation(grads, variables.params, sam_rho, sam_adaptive, sam_mask)
      perturbed = jax.tree.map(lambda w, d: w + d.astype(w.dtype), variables.params, e)
      grads, *_ = gradients(perturbed, variables.batch_stats, state.rngs, micro, lam)
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
    if k > 1:  # The examples in micro-batch order, as the logits.
      micro = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), micro)
    accuracy_labels = micro["label"]
    if lam is not None:
      accuracy_labels = mixup.dominant_labels(micro["label"], micro["partner_label"], lam)
    # A reduction over the new parameters: a diverging run stops at its first bad step.
    finite = jnp.isfinite(losses.mean()) & jax.tree.reduce(
        lambda ok, p: ok & jnp.all(jnp.isfinite(p)), params, jnp.bool_(True))
    step_metrics = metrics.TrainMetrics.single_from_model_output(
        loss=losses, logits=logits, labels=accuracy_labels, learning_rate=lr, finite=finite,
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
