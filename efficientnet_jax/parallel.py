"""Data parallelism: one mesh axis 'data' over all devices.

The batch is split along 'data'; parameters and optimizer state are replicated. Inside
a jitted step BatchNorm then computes its statistics over the global batch. The same
code runs on 1 CPU, N forced CPU devices, N GPUs and (with jax.distributed) many hosts.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def create_mesh() -> Mesh:
  """A 1-D mesh over every device of every process."""
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data'."""
  return NamedSharding(mesh, P(DATA_AXIS))


def host_batch_size(global_batch: int, mesh: Mesh, field: str) -> int:
  """The per-process share of a global batch; raises if devices cannot split it evenly."""
  devices = mesh.devices.size
  if global_batch <= 0 or global_batch % devices:
    raise ValueError(
        f"{field}={global_batch} must be a positive multiple of the number of devices "
        f"({devices}: {jax.device_count()} over {jax.process_count()} processes); "
        f"e.g. --config.{field}={max(1, round(global_batch / devices)) * devices}.")
  return global_batch // jax.process_count()


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Copies a pytree of arrays onto every device of the mesh."""
  return jax.device_put(tree, replicated(mesh))


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's batch slice -> global arrays sharded along 'data'."""
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local.items()}
