"""Which multi-process launch `parallel.detect_launch` sees in flags and environments."""

import pytest

from efficientnet_jax import parallel


def test_single_process_without_launch_environment():
  assert parallel.detect_launch(environ={}) is None
  assert parallel.detect_launch(environ={"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}) is None
  assert parallel.detect_launch(environ={"SLURM_STEP_NUM_TASKS": "1"}) is None
  assert parallel.detect_launch(environ={"OMPI_COMM_WORLD_SIZE": "1"}) is None
  assert parallel.detect_launch(num_processes=1, process_id=0, environ={}) is None


def test_explicit_flags_win_over_the_environment():
  env = {"JAX_COORDINATOR_ADDRESS": "other:1", "SLURM_STEP_NUM_TASKS": "8"}
  launch = parallel.detect_launch("host0:1234", 2, 1, environ=env)
  assert launch == parallel.Launch("flags", "host0:1234", 2, 1)


def test_environment_variables():
  env = {"JAX_COORDINATOR_ADDRESS": "h:9", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
  assert parallel.detect_launch(environ=env) == parallel.Launch("environment", "h:9", 4, 3)


def test_kubernetes_indexed_job_index_is_the_process_id():
  env = {"JAX_COORDINATOR_ADDRESS": "train-0.train:1234", "JAX_NUM_PROCESSES": "2",
         "JOB_COMPLETION_INDEX": "1"}
  assert parallel.detect_launch(environ=env) == parallel.Launch(
      "kubernetes", "train-0.train:1234", 2, 1)


def test_slurm_and_open_mpi_are_left_to_jax_detection():
  assert parallel.detect_launch(environ={"SLURM_STEP_NUM_TASKS": "16"}).cluster == "slurm"
  assert parallel.detect_launch(environ={"OMPI_COMM_WORLD_SIZE": "2"}).cluster == "ompi"


def test_incomplete_or_invalid_launches_name_what_to_set():
  with pytest.raises(ValueError, match="lacks coordinator_address.*--coordinator_address"):
    parallel.detect_launch(num_processes=2, process_id=0, environ={})
  with pytest.raises(ValueError, match="lacks num_processes"):
    parallel.detect_launch(environ={"JAX_COORDINATOR_ADDRESS": "h:1", "JOB_COMPLETION_INDEX": "0"})
  with pytest.raises(ValueError, match=r"process_id=2 must be in \[0, num_processes=2\)"):
    parallel.detect_launch("h:1", 2, 2, environ={})
  with pytest.raises(ValueError, match="JAX_NUM_PROCESSES='two'"):
    parallel.detect_launch(environ={"JAX_NUM_PROCESSES": "two"})
