"""Which multi-process launch `parallel.detect_launch` sees in flags and environments; the
launch/ scripts build the right commands."""

import os
import subprocess
import sys

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


# --- launch/ scripts ------------------------------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch")


def _fake_program(tmp_path, name: str) -> str:
  """An executable that prints its arguments and CUDA_VISIBLE_DEVICES, one per line."""
  path = tmp_path / name
  path.write_text('#!/bin/bash\necho "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-}"\n'
                  'printf "%s\\n" "$@"\n')
  path.chmod(0o755)
  return str(path)


def test_scripts_parse_and_print_usage_without_arguments():
  for name in ("local_multiprocess.sh", "single_host_gpus.sh", "slurm.sbatch"):
    path = os.path.join(LAUNCH, name)
    assert subprocess.run(["bash", "-n", path]).returncode == 0, name
    proc = subprocess.run(["bash", path], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "--config=" in proc.stderr, name


def test_single_host_script_selects_gpus_and_passes_flags(tmp_path):
  fake = _fake_program(tmp_path, "python")
  proc = subprocess.run([os.path.join(LAUNCH, "single_host_gpus.sh"), "--config=c.py",
                         "--workdir=w"], env={**os.environ, "PYTHON": fake, "GPUS": "0,1"},
                        capture_output=True, text=True, timeout=30)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.splitlines() == ["CUDA_VISIBLE_DEVICES=0,1", "-m", "efficientnet_jax.main",
                                      "--config=c.py", "--workdir=w"]


def test_slurm_script_runs_one_srun_step_of_main(tmp_path):
  _fake_program(tmp_path, "srun")
  env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "SLURM_SUBMIT_DIR": ROOT,
         "SLURM_JOB_ID": "42", "PYTHON": "python3"}
  proc = subprocess.run(["bash", os.path.join(LAUNCH, "slurm.sbatch"), "--config=c.py",
                         "--workdir=w"], env=env, capture_output=True, text=True, timeout=30)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.splitlines()[1:] == [
      "CUDA_VISIBLE_DEVICES=", "--kill-on-bad-exit=1", "python3", "-m", "efficientnet_jax.main",
      "--config=c.py", "--workdir=w"]


def test_kubernetes_example_is_consistent():
  yaml = pytest.importorskip("yaml")
  with open(os.path.join(LAUNCH, "kubernetes_indexed_job.yaml")) as f:
    service, job = yaml.safe_load_all(f)
  spec, pod = job["spec"], job["spec"]["template"]["spec"]
  env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
  assert spec["completionMode"] == "Indexed"
  assert spec["completions"] == spec["parallelism"] == int(env["JAX_NUM_PROCESSES"])
  assert pod["subdomain"] == service["metadata"]["name"] and service["spec"]["clusterIP"] == "None"
  job_name, port = job["metadata"]["name"], service["spec"]["ports"][0]["port"]
  assert env["JAX_COORDINATOR_ADDRESS"] == f"{job_name}-0.{service['metadata']['name']}:{port}"
  assert service["spec"]["selector"] == {"job-name": job_name}
  launch = parallel.detect_launch(environ={**env, "JOB_COMPLETION_INDEX": "1"})
  assert launch == parallel.Launch("kubernetes", env["JAX_COORDINATOR_ADDRESS"], 2, 1)


def test_local_launch_stops_every_process_when_one_fails(tmp_path):
  proc = subprocess.run(
      [os.path.join(LAUNCH, "local_multiprocess.sh"), "2", f"--config={tmp_path}/missing.py",
       f"--workdir={tmp_path}/run"],
      env={**os.environ, "PYTHON": sys.executable, "LOG_DIR": str(tmp_path / "logs")},
      capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1
  assert "A process failed; stopping the others" in proc.stderr
  assert "missing.py" in proc.stderr  # Process 0's own error.
