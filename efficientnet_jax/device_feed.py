"""Training batches on the device ahead of their step (device prefetch).

  feed = DevicePrefetch(train_iter, mesh, timing=split.timing)
  host_batch, device_batch = next(feed)          # the next batch is already on its way
  ckpts.save_latest(step, state, meta, feed)     # the position of the batches handed out

The transfer of the next global batch is issued before the current step is dispatched, so
it overlaps that step on the device. A checkpoint of the feed holds the iterator's
position after the batches handed out (consumed by steps), never the ones in flight: a
resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import collections
import contextlib
import json
from collections.abc import Callable
from typing import Any, ContextManager

import jax
import numpy as np
from jax.sharding import Mesh

from efficientnet_jax import parallel


def _untimed(part: str) -> ContextManager[None]:
  del part
  return contextlib.nullcontext()


class DevicePrefetch:
  """Global batches from `iterator` (a grain DatasetIterator of process-local batches),
  `depth` in flight: the one handed out and depth - 1 transferred ahead. `timing(part)`
  times the waits for input ("input_wait") and the transfer calls ("host_to_device")."""

  def __init__(self, iterator: Any, mesh: Mesh, depth: int = 2,
               timing: Callable[[str], ContextManager[None]] = _untimed):
    self._iterator, self._mesh, self._depth, self._timing = iterator, mesh, depth, timing
    # (host batch, device batch, the iterator's state after it), oldest first.
    self._ahead: collections.deque[tuple[dict[str, np.ndarray], dict[str, jax.Array], str]] = (
        collections.deque())
    self._state = self._position()

  def _position(self) -> str:
    return json.dumps(self._iterator.get_state(), indent=4)

  def __iter__(self) -> DevicePrefetch:
    return self

  def __next__(self) -> tuple[dict[str, np.ndarray], dict[str, jax.Array]]:
    """(this process's host batch, the global batch on the devices)."""
    while len(self._ahead) < self._depth:
      with self._timing("input_wait"):
        host = next(self._iterator)
        state = self._position()
      with self._timing("host_to_device"):
        self._ahead.append((host, parallel.global_batch(host, self._mesh), state))
    host, device, self._state = self._ahead.popleft()
    return host, device

  def get_state(self) -> bytes:
    """The iterator's state after the batches handed out, as grain's checkpoint handler
    writes a DatasetIterator's (JSON): the checkpoint restores into the plain iterator."""
    return self._state.encode()
