"""The console side of a run: progress lines with throughput and ETA, and the training
throughput of a session."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from absl import logging


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
