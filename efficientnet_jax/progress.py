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
        "epoch %d/%d step %d/%d (%.0f%%) loss=%.4f acc=%.3f lr=%.2e %.1f img/s %.3f s/step "
        "data wait %.0f%% h2d %.1f ms ETA %s",
        epoch, num_epochs, step, self.total_steps, 100.0 * step / max(self.total_steps, 1),
        scalars["train/loss"], scalars["train/accuracy"], scalars["train/learning_rate"],
        scalars["perf/images_per_sec"], scalars["perf/step_time"],
        100 * scalars["perf/data_wait_fraction"], 1e3 * scalars["perf/h2d_time"], eta_text)


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


class TimeSplit:
  """Where the training loop's wall time goes: the parts timed with `timing` (a part timed
  inside another counts only for itself) and "train_steps", the rest (dispatching steps and
  waiting for them). Per logging interval (`interval`), per epoch (`end_epoch`) and in all.

  Parts: "setup" (from `since` to the creation: restoring, building the model),
  "compile" (the session's first step and sample images: compilation or the cache load,
  and one run), "input_wait" (next(iterator)), "host_to_device" (the batch's transfer
  call), "validation", "checkpoint" (the blocking part of writes), "test"."""

  PARTS = ("setup", "compile", "input_wait", "host_to_device", "validation", "checkpoint",
           "test")

  def __init__(self, since: float):
    self._start = since
    self._total = dict.fromkeys(self.PARTS, 0.0)
    self._total["setup"] = time.perf_counter() - since
    self._inner = 0.0  # Seconds of parts timed inside the one being timed.
    self.restart()

  def restart(self) -> None:
    """Starts the interval and epoch clocks (the time since counts as train_steps)."""
    self._epoch = dict.fromkeys(self.PARTS, 0.0)
    self._interval = dict.fromkeys(self.PARTS, 0.0)
    self._epoch_start = self._interval_start = time.perf_counter()
    self._interval_steps = 0

  @contextlib.contextmanager
  def timing(self, part: str):
    outer, self._inner = self._inner, 0.0
    start = time.perf_counter()
    try:
      yield
    finally:
      seconds = time.perf_counter() - start
      for split in (self._total, self._epoch, self._interval):
        split[part] += seconds - self._inner
      self._inner = outer + seconds

  def step(self) -> None:
    self._interval_steps += 1

  def interval(self) -> dict[str, float]:
    """perf/ scalars since the previous call: the share of the loop's time (compilation
    and validation aside) spent waiting for input, and the transfer call's time per step."""
    now = time.perf_counter()
    parts, steps = self._interval, max(self._interval_steps, 1)
    busy = now - self._interval_start - parts["compile"] - parts["validation"] - parts["test"]
    scalars = {"perf/data_wait_fraction": parts["input_wait"] / max(busy, 1e-9),
               "perf/h2d_time": parts["host_to_device"] / steps}
    self._interval = dict.fromkeys(self.PARTS, 0.0)
    self._interval_start, self._interval_steps = now, 0
    return scalars

  def total(self) -> dict[str, float]:
    """The seconds of each part (and train_steps) since the start."""
    return {"train_steps": time.perf_counter() - self._start - sum(self._total.values()),
            **self._total}

  def end_epoch(self) -> dict[str, float]:
    """The seconds of each part (and train_steps) since the previous call."""
    now = time.perf_counter()
    split = {"train_steps": now - self._epoch_start - sum(self._epoch.values()), **self._epoch}
    self._epoch = dict.fromkeys(self.PARTS, 0.0)
    self._epoch_start = now
    return split


def format_split(split: Mapping[str, float]) -> str:
  """'train_steps 5.1 s (61%), input_wait 0.4 s (5%), ...' (parts that took any time)."""
  total = max(sum(split.values()), 1e-9)
  return ", ".join(f"{part} {seconds:.1f} s ({100 * seconds / total:.0f}%)"
                   for part, seconds in split.items() if seconds >= 0.05)
