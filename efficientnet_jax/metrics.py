"""Metrics: CLU metric collections (built inside the jitted steps) and run reporting
(TensorBoard writer, run info files, console progress, image summaries).

No `from __future__ import annotations` here: clu reads the Collection annotations.
"""

import contextlib
import json
import logging as logging_lib
import os
import subprocess
import time
from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
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


@flax.struct.dataclass
class TrainMetrics(clu_metrics.Collection):
  loss: clu_metrics.Average.from_output("loss")
  accuracy: clu_metrics.Accuracy
  learning_rate: clu_metrics.LastValue.from_output("learning_rate")


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
  """Computed scalar metrics as floats, named '{prefix}/{metric}' (confusion left out)."""
  out = {}
  for name, value in collection.compute().items():
    value = np.asarray(jax.device_get(value))
    if value.ndim == 0:
      out[f"{prefix}/{name}"] = float(value)
  return out


def classification_report(counts: np.ndarray, class_names: tuple[str, ...],
                          hardest: int = 10) -> dict[str, Any]:
  """Per-class accuracy and the `hardest` classes (lowest accuracy) from a confusion matrix."""
  counts = np.asarray(counts)
  support = counts.sum(axis=1)
  accuracy = np.divide(np.diag(counts), support, out=np.zeros(len(counts)), where=support > 0)
  order = [i for i in np.argsort(accuracy, kind="stable") if support[i] > 0][:hardest]
  return {
      "num_examples": int(support.sum()),
      "per_class_accuracy": {name: float(a) for name, a in zip(class_names, accuracy)},
      "hardest_classes": [{"label": int(i), "class": class_names[i], "accuracy": float(accuracy[i]),
                           "num_examples": int(support[i])} for i in order],
  }


# --- Writers and run info -------------------------------------------------------------


def create_writer(workdir: str):
  """A TensorBoard writer (event files in `workdir`) on process 0, a no-op elsewhere."""
  # clu's summary writer imports TensorFlow, which must never claim a GPU.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")
  from clu import metric_writers  # pylint: disable=g-import-not-at-top

  if jax.process_index() > 0:
    return metric_writers.MultiWriter([])
  return metric_writers.AsyncMultiWriter([metric_writers.SummaryWriter(workdir)])


def git_revision() -> str:
  """The source tree's commit (suffixed '-dirty' with local changes), or 'unknown'."""
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                         text=True, check=True, timeout=10).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                           capture_output=True, text=True, check=True, timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return "unknown"
  return rev + ("-dirty" if dirty else "")


def write_run_info(workdir: str, config: ml_collections.ConfigDict, writer) -> None:
  """Saves config.json and git_revision.txt in the workdir; hparams + config to TensorBoard."""
  if jax.process_index() > 0:
    return
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  revision = git_revision()
  with open(os.path.join(workdir, "git_revision.txt"), "w") as f:
    f.write(revision + "\n")
  writer.write_hparams(flatten(config.to_dict()))
  writer.write_texts(0, {"config": f"```\n{config}\n```", "git_revision": revision})


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1}; non-scalar values as strings (for hparams)."""
  out: dict[str, Any] = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(flatten(value, name + "."))
    else:
      out[name] = value if isinstance(value, (bool, int, float, str)) else str(value)
  return out


def write_json(path: str, obj: Any) -> None:
  """Writes JSON atomically (temp file + rename) from process 0."""
  if jax.process_index() > 0:
    return
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2)
  os.replace(tmp, path)


# --- Images ---------------------------------------------------------------------------


def image_grid(images: np.ndarray, columns: int = 8) -> np.ndarray:
  """uint8 [N, H, W, C] -> one uint8 [rows*H, columns*W, C] mosaic (2 px gaps)."""
  n, h, w, c = images.shape
  columns = min(columns, n)
  rows = -(-n // columns)
  gap = 2
  grid = np.zeros((rows * (h + gap) - gap, columns * (w + gap) - gap, c), np.uint8)
  for i, image in enumerate(images):
    r, col = divmod(i, columns)
    grid[r * (h + gap):r * (h + gap) + h, col * (w + gap):col * (w + gap) + w] = image
  return grid


def confusion_image(counts: np.ndarray, cell: int | None = None) -> np.ndarray:
  """Row-normalized confusion matrix as an RGB heat map (white 0 -> dark blue 1).

  Rows are true classes, columns predictions; each cell is `cell` pixels wide
  (default: about 512 px in total).
  """
  counts = np.asarray(counts, np.float64)
  rows = counts.sum(axis=1, keepdims=True)
  frac = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
  cell = cell or max(1, 512 // len(counts))
  frac = np.kron(frac, np.ones((cell, cell)))
  white, blue = np.array([255.0, 255.0, 255.0]), np.array([8.0, 48.0, 107.0])
  return (white + frac[..., None] * (blue - white)).round().astype(np.uint8)


# --- Timing and console --------------------------------------------------------------------------


def quiet_library_logs() -> None:
  """Console: INFO lines of this package only; libraries (Orbax, TFDS, Grain) from WARNING."""
  package = os.path.dirname(os.path.abspath(__file__))

  def keep(record: logging_lib.LogRecord) -> bool:
    return record.levelno >= logging_lib.WARNING or record.pathname.startswith(package)

  logging.get_absl_handler().addFilter(keep)


class Progress:
  """Console progress lines with throughput and ETA (process 0 only)."""

  def __init__(self, total_steps: int, start_step: int, global_batch: int):
    self.total_steps = total_steps
    self.global_batch = global_batch
    self._last = (time.perf_counter(), start_step)
    self._first: tuple[float, int] | None = None  # After the first (compiling) interval.

  def timing(self, step: int) -> dict[str, float]:
    """Seconds per step and images/s since the previous call (call after a host sync)."""
    now = time.perf_counter()
    t0, s0 = self._last
    self._last = (now, step)
    if self._first is None:
      self._first = (now, step)
    steps = max(step - s0, 1)
    return {"perf/step_time": (now - t0) / steps,
            "perf/images_per_sec": steps * self.global_batch / max(now - t0, 1e-9)}

  def eta_seconds(self, step: int) -> float:
    """Remaining time at the average pace since the first interval (nan before)."""
    if self._first is None or step <= self._first[1]:
      return float("nan")
    t0, s0 = self._first
    return (time.perf_counter() - t0) / (step - s0) * (self.total_steps - step)

  def log(self, step: int, epoch: int, num_epochs: int, scalars: Mapping[str, float]) -> None:
    """One console line from train and perf scalars; `epoch` is 1-based."""
    if jax.process_index() > 0:
      return
    eta = self.eta_seconds(step)
    eta_text = "?" if np.isnan(eta) else time.strftime("%H:%M:%S", time.gmtime(eta))
    logging.info(
        "epoch %d/%d step %d/%d (%.0f%%) loss=%.4f acc=%.3f lr=%.2e %.1f img/s %.3f s/step ETA %s",
        epoch, num_epochs, step, self.total_steps, 100.0 * step / max(self.total_steps, 1),
        scalars["train/loss"], scalars["train/accuracy"], scalars["train/learning_rate"],
        scalars["perf/images_per_sec"], scalars["perf/step_time"], eta_text)


class Throughput:
  """Training images/s of a session, excluding the first (compiling) step and pauses."""

  def __init__(self):
    self._start: float | None = None
    self._images = 0
    self._paused = 0.0

  def step(self, state: Any, batch_size: int) -> None:
    """Call after dispatching each train step."""
    if self._start is None:
      jax.block_until_ready(state)  # The first step compiles; time the ones after it.
      self._start = time.perf_counter()
    else:
      self._images += batch_size

  @contextlib.contextmanager
  def paused(self, state: Any):
    """Time spent inside (e.g. validation) does not count."""
    jax.block_until_ready(state)
    start = time.perf_counter()
    yield
    self._paused += time.perf_counter() - start

  def images_per_sec(self, state: Any) -> float | None:
    """Waits for the dispatched steps; None before two steps have run."""
    if not self._images:
      return None
    jax.block_until_ready(state)
    return self._images / (time.perf_counter() - self._start - self._paused)
