"""Data parallelism: one mesh axis 'data' over all devices of all processes.

The batch is split along 'data'; parameters and optimizer state are replicated. Inside
a jitted step BatchNorm then computes its statistics over the global batch. The same
code runs on 1 CPU, N forced CPU devices, N GPUs and (after `initialize`) many processes
on many hosts, each feeding its share of the batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from efficientnet_jax.errors import ConfigError

DATA_AXIS = "data"


@dataclasses.dataclass(frozen=True)
class Launch:
  """How this process joins a multi-process run.

  `coordinator_address`, `num_processes` and `process_id` are None where JAX detects them
  itself from the cluster named by `cluster` ('slurm', 'ompi').
  """

  source: str
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  cluster: str | None = None


def _int_env(environ: Mapping[str, str], name: str) -> int | None:
  value = environ.get(name)
  if value in (None, ""):
    return None
  try:
    return int(value)
  except ValueError:
    raise ConfigError(f"Environment variable {name}={value!r} must be an integer.") from None


def detect_launch(coordinator_address: str | None = None, num_processes: int | None = None,
                  process_id: int | None = None,
                  environ: Mapping[str, str] = os.environ) -> Launch | None:
  """The multi-process launch this process is part of, or None for a single process.

  In order: explicit values (main.py's --coordinator_address, --num_processes,
  --process_id), else the environment variables JAX_COORDINATOR_ADDRESS,
  JAX_NUM_PROCESSES and JAX_PROCESS_ID (JOB_COMPLETION_INDEX, set by a Kubernetes Indexed
  Job or JobSet, stands in for the last); else an `srun` step of several SLURM tasks;
  else an Open MPI job of several ranks (`mpirun`).
  """
  explicit = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in explicit):
    source = "flags"
  else:
    source = "environment"
    coordinator_address = environ.get("JAX_COORDINATOR_ADDRESS") or None
    num_processes = _int_env(environ, "JAX_NUM_PROCESSES")
    process_id = _int_env(environ, "JAX_PROCESS_ID")
    if process_id is None and "JOB_COMPLETION_INDEX" in environ:
      source, process_id = "kubernetes", _int_env(environ, "JOB_COMPLETION_INDEX")
  if any(v is not None for v in (coordinator_address, num_processes, process_id)):
    if num_processes == 1 and process_id in (None, 0):
      return None
    missing = [name for name, v in (("coordinator_address", coordinator_address),
                                    ("num_processes", num_processes),
                                    ("process_id", process_id)) if v is None]
    if missing:
      raise ConfigError(
          f"Multi-process launch ({source}) lacks {', '.join(missing)}: pass all of "
          "--coordinator_address=HOST:PORT --num_processes=N --process_id=I (or set "
          "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID).")
    if not 0 <= process_id < num_processes:
      raise ConfigError(f"process_id={process_id} must be in [0, num_processes={num_processes}).")
    return Launch(source, coordinator_address, num_processes, process_id)
  if (_int_env(environ, "SLURM_STEP_NUM_TASKS") or 1) > 1:  # Set inside `srun` steps only.
    return Launch("slurm", cluster="slurm")
  if (_int_env(environ, "OMPI_COMM_WORLD_SIZE") or 1) > 1:
    return Launch("openmpi", cluster="ompi")
  return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Joins JAX's distributed runtime when launched as one of several processes (see
  `detect_launch`); a no-op for a single process. Call before any other use of JAX."""
  launch = detect_launch(coordinator_address, num_processes, process_id)
  if launch is None:
    return
  if launch.cluster:
    jax.distributed.initialize(cluster_detection_method=launch.cluster)
  else:
    # Every value is given: no cluster auto-detection, every local device is used
    # (JAX_LOCAL_DEVICE_IDS still restricts them).
    jax.distributed.initialize(launch.coordinator_address, launch.num_processes,
                               launch.process_id, cluster_detection_method="deactivate")
  logging.info("Process %d of %d (%s launch): %d local of %d global devices.",
               jax.process_index(), jax.process_count(), launch.source,
               jax.local_device_count(), jax.device_count())
  _connect_collectives()


# How long a process waits for the others at a barrier: data preparation by process 0 may
# take that long.
BARRIER_TIMEOUT_S = 4 * 3600


def barrier(name: str) -> None:
  """Waits until every process reaches barrier `name` (each name used once), through the
  distributed runtime's coordination service, not a collective (see _connect_collectives)."""
  if jax.process_count() > 1:
    ocp.multihost.get_barrier_sync_fn()(key=name, timeout_ms=BARRIER_TIMEOUT_S * 1000)


def _connect_collectives() -> None:
  """Sets up the CPU collectives' connections while all processes are in step.

  Gloo (XLA:CPU's cross-process collectives) connects the processes at a set of devices'
  first collective and gives up when a peer is over 30 s late (hard-coded), e.g. while
  process 0 prepares the data or compiles more slowly under load. Once connected, a
  collective waits as long as it takes. So right after start-up, behind a barrier, run one
  collective over every device (the train and eval steps' set) and one over a device per
  process (process_allgather's, also used by Orbax).
  """
  barrier("efficientnet_jax_connect")
  mesh = create_mesh()
  ones = jax.make_array_from_process_local_data(batch_sharded(mesh),
                                                np.ones(jax.local_device_count(), np.float32))
  jax.block_until_ready(jax.jit(jnp.sum, out_shardings=replicated(mesh))(ones))
  multihost_utils.process_allgather(np.zeros((), np.int32))


def is_main_process() -> bool:
  """Process 0 writes the run's files (events, JSON, logs); the others only compute."""
  return jax.process_index() == 0


def any_process(flag: bool) -> bool:
  """Whether `flag` is True on any process, answered alike on all of them.

  A collective (every process must call it at the same point), e.g. so that a SIGTERM
  received by some processes stops all of them after the same step.
  """
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


@contextlib.contextmanager
def main_process_first(name: str) -> Iterator[None]:
  """Process 0 runs the body first (e.g. preparing shared files), the others after it.

  Every process must enter with the same `name`, once. A no-op for one process.
  """
  if not is_main_process():
    barrier(name)
  yield
  if is_main_process():
    barrier(name)


def create_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh over `devices` (default: every device of every process)."""
  return Mesh(np.asarray(jax.devices() if devices is None else devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data'."""
  return NamedSharding(mesh, P(DATA_AXIS))


def host_batch_size(global_batch: int, mesh: Mesh, field: str) -> int:
  """The per-process share of a global batch; raises if devices cannot split it evenly."""
  devices = mesh.devices.size
  if global_batch <= 0 or global_batch % devices:
    raise ConfigError(
        f"{field}={global_batch} must be a positive multiple of the number of devices "
        f"({devices}: {jax.device_count()} over {jax.process_count()} processes); "
        f"e.g. --config.{field}={max(1, round(global_batch / devices)) * devices}.")
  return global_batch // jax.process_count()


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Copies a pytree of arrays onto every device of the mesh.

  Every process must pass the same values; each fills its own devices from its copy
  (`jax.device_put` would refuse arrays already placed on a device of this process).
  """
  sharding = replicated(mesh)

  def put(x: Any) -> jax.Array:
    if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
      return jax.random.wrap_key_data(put(jax.random.key_data(x)), impl=jax.random.key_impl(x))
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

  return jax.tree.map(put, tree)


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's batch slice -> global arrays sharded along 'data'."""
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local.items()}
