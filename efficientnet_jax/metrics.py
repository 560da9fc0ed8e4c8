"""Metrics: the CLU metric collections built inside the jitted steps, and what is computed
from them (scalars, the per-class report of a confusion matrix).

No `from __future__ import annotations` here: clu reads the Collection annotations.
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from clu import metrics as clu_metrics

TOP_K = 5


@flax.struct.dataclass
class TopKAccuracy(clu_metrics.Average):
  """Fraction of examples whose label is among the TOP_K highest logits."""

  @classmethod
  def from_model_output(cls, *, logits: jax.Array, labels: jax.Array,
                        mask: jax.Array | None = None, **_) -> "TopKAccuracy":
    k = min(TOP_K, logits.shape[-1])
    _, top = jax.lax.top_k(logits, k)
    hit = jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)
    metric = clu_metrics.Average.from_model_output(hit, mask=mask)
    return cls(total=metric.total, count=metric.count)


@flax.struct.dataclass
class ConfusionMatrix(clu_metrics.Metric):
  """Counts [true class, predicted class] over unmasked examples."""

  counts: jax.Array

  @classmethod
  def from_model_output(cls, *, logits: jax.Array, labels: jax.Array,
                        mask: jax.Array | None = None, **_) -> "ConfusionMatrix":
    num_classes = logits.shape[-1]
    weight = jnp.ones_like(labels) if mask is None else mask.astype(jnp.int32)
    counts = jnp.zeros((num_classes, num_classes), jnp.int32)
    return cls(counts=counts.at[labels, jnp.argmax(logits, -1)].add(weight))

  def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
    return type(self)(counts=self.counts + other.counts)

  def compute(self) -> jax.Array:
    return self.counts


NO_STEP = np.iinfo(np.int32).max  # FirstNonFinite's value while every step was finite.


@flax.struct.dataclass
class FirstNonFinite(clu_metrics.Metric):
  """The first step (1-based) whose loss or updated parameters were not finite; NO_STEP if none."""

  step: jax.Array

  @classmethod
  def empty(cls) -> "FirstNonFinite":
    return cls(step=jnp.asarray(NO_STEP, jnp.int32))

  @classmethod
  def from_model_output(cls, *, finite: jax.Array, step: jax.Array, **_) -> "FirstNonFinite":
    return cls(step=jnp.where(finite, NO_STEP, step).astype(jnp.int32))

  def merge(self, other: "FirstNonFinite") -> "FirstNonFinite":
    return type(self)(step=jnp.minimum(self.step, other.step))

  def compute(self) -> jax.Array:
    return self.step


@flax.struct.dataclass
class TrainMetrics(clu_metrics.Collection):
  loss: clu_metrics.Average.from_output("loss")
  accuracy: clu_metrics.Accuracy
  learning_rate: clu_metrics.LastValue.from_output("learning_rate")
  first_nonfinite: FirstNonFinite


@flax.struct.dataclass
class EvalMetrics(clu_metrics.Collection):
  loss: clu_metrics.Average.from_output("loss")
  top1: clu_metrics.Accuracy
  top5: TopKAccuracy
  confusion: ConfusionMatrix


def merge(total: clu_metrics.Collection | None, new: clu_metrics.Collection) -> clu_metrics.Collection:
  """Accumulates metric collections on the device (no host sync)."""
  return new if total is None else total.merge(new)


def scalars(collection: clu_metrics.Collection, prefix: str) -> dict[str, float]:
  """Computed scalar metrics as floats, named '{prefix}/{metric}' (confusion and
  first_nonfinite left out)."""
  out = {}
  for name, value in collection.compute().items():
    value = np.asarray(jax.device_get(value))
    if value.ndim == 0 and name != "first_nonfinite":
      out[f"{prefix}/{name}"] = float(value)
  return out


def first_nonfinite_step(train: TrainMetrics | None) -> int | None:
  """The first step of `train`'s interval whose loss or parameters were not finite, or None."""
  if train is None:
    return None
  step = int(jax.device_get(train.first_nonfinite.compute()))
  return None if step == NO_STEP else step


def to_json(collection: clu_metrics.Collection | None) -> dict[str, Any] | None:
  """A metric collection's state as JSON-able lists (to carry a partial interval over a resume)."""
  if collection is None:
    return None
  state = flax.serialization.to_state_dict(jax.device_get(collection))
  return jax.tree.map(lambda x: np.asarray(x).tolist(), state)


def from_json(cls: type, state: dict[str, Any] | None) -> clu_metrics.Collection | None:
  """The collection `to_json` wrote, or None."""
  if state is None:
    return None
  empty = jax.device_get(cls.empty())
  restored = flax.serialization.from_state_dict(empty, state)
  return jax.tree.map(lambda e, v: np.asarray(v, np.asarray(e).dtype), empty, restored)


def classification_report(counts: np.ndarray, class_names: tuple[str, ...],
                          hardest: int = 10) -> dict[str, Any]:
  """Per-class accuracy and the `hardest` classes (lowest accuracy) from a confusion matrix."""
  counts = np.asarray(counts)
  support = counts.sum(axis=1)
  accuracy = np.divide(np.diag(counts), support, out=np.zeros(len(counts)), where=support > 0)
  order = [i for i in np.argsort(accuracy, kind="stable") if support[i] > 0][:hardest]
  return {
      "num_examples": int(support.sum()),
      # None (JSON null) for a class without examples in the split: not an accuracy of 0.
      "per_class_accuracy": {name: float(a) if n else None
                             for name, a, n in zip(class_names, accuracy, support)},
      "hardest_classes": [{"label": int(i), "class": class_names[i], "accuracy": float(accuracy[i]),
                           "num_examples": int(support[i])} for i in order],
  }
