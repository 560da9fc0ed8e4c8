"""The command line: a misspelled config field fails in one clear line."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_misspelled_config_field_names_it_and_suggests_the_right_one(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "efficientnet_jax.main", "--config=configs/default.py",
       f"--workdir={tmp_path}", "--config.optim.lrr=0.1"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("Error: unknown config field 'lrr' in --config.optim.lrr.")
  assert 'Did you mean "lr"' in last and "Traceback" not in proc.stderr
  assert not os.listdir(tmp_path)  # Nothing ran.
