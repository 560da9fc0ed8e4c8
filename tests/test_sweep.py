"""launch/sweep.py: a 2x2 grid on the demo data, run here; the same grid as a SLURM array."""

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow  # Whole training runs; make test starts these first.
SWEEP = os.path.join(ROOT, "launch", "sweep.py")
# optim.lr (injected) and seed leave the compiled steps unchanged: trials 2-4 reuse the
# persistent compilation cache.
GRID = ["--grid=optim.lr=0.005,0.001", "--grid=seed=0,1"]
SHARED = ["--set=data.image_size=32", "--set=model.depthwise=conv", "--set=train.num_epochs=1",
          "--set=train.num_sample_images=0", "--set=eval.batch_size=16"]
NAMES = ["lr=0.005,seed=0", "lr=0.005,seed=1", "lr=0.001,seed=0", "lr=0.001,seed=1"]


def _sweep(*args, env=None):
  return subprocess.run([sys.executable, SWEEP, "--config=configs/demo.py", *GRID, *SHARED, *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)


def test_grid_runs_every_trial_in_its_workdir_then_reports(tmp_path):
  runs = tmp_path / "runs"
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "EFFICIENTNET_JAX_DEMO_DATA": str(tmp_path / "data")}
  proc = _sweep(f"--runs_dir={runs}", env=env)
  assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
  for name in NAMES:
    results = json.load(open(runs / name / "results.json"))
    assert results["test"]["num_examples"] == 40
    assert (runs / name / "train.log").stat().st_size > 0
  config = json.load(open(runs / "lr=0.001,seed=1" / "config.json"))
  assert config["optim"]["lr"] == 0.001 and config["seed"] == 1
  assert config["data"]["image_size"] == 32

  table = [line for line in proc.stdout.splitlines() if line.startswith("| lr=")]
  assert len(table) == 4 and all(line.endswith("| done |") or line.endswith("| early stop |")
                                 for line in table)
  assert "| trial | optim.lr | seed | val top1 | test top1 | epochs | status |" in proc.stdout
  for field in ("optim.lr", "seed"):
    with Image.open(runs / f"plot_{field}.png") as image:
      assert image.size == (640, 400)

  # Rerunning skips finished trials.
  again = _sweep(f"--runs_dir={runs}", env=env)
  assert again.returncode == 0 and again.stdout.count("done before, skipped") == 4


def test_slurm_array_runs_trial_i_in_task_i(tmp_path):
  runs = tmp_path / "runs"
  proc = _sweep(f"--runs_dir={runs}", "--slurm", "--", "--num_processes=1")
  assert proc.returncode == 0, proc.stderr
  sbatch = (runs / "sweep.sbatch").read_text()
  assert f"sbatch {runs}/sweep.sbatch" in proc.stdout
  assert "#SBATCH --array=0-3" in sbatch and not any(runs.glob("lr=*"))  # Nothing ran.

  # Task 2's command line, as the array script builds it.
  script = sbatch.replace('exec "${PYTHON:-', 'printf "%s\\n" "${PYTHON:-')
  out = subprocess.run(["bash", "-c", script], env={**os.environ, "SLURM_ARRAY_TASK_ID": "2",
                                                    "PYTHON": "python"},
                       capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stderr
  assert out.stdout.splitlines() == [
      "python", "-m", "efficientnet_jax.main", f"--config={ROOT}/configs/demo.py",
      f"--workdir={runs}/lr=0.001,seed=0", "--config.data.image_size=32",
      "--config.model.depthwise=conv", "--config.train.num_epochs=1",
      "--config.train.num_sample_images=0", "--config.eval.batch_size=16",
      "--config.optim.lr=0.001", "--config.seed=0", "--num_processes=1"]


@pytest.mark.parametrize("bad, message", [
    ("--grid=optim.lr", "--grid='optim.lr': expected FIELD=VALUE"),
    ("--set=train.num_epochs=", "--set='train.num_epochs=': expected FIELD=VALUE"),
])
def test_malformed_overrides_are_named(tmp_path, bad, message):
  proc = subprocess.run([sys.executable, SWEEP, "--config=configs/demo.py",
                         f"--runs_dir={tmp_path}", "--grid=seed=0,1", bad],
                        cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert proc.returncode != 0 and message in proc.stderr
