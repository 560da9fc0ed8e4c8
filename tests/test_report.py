"""The sweep report: trials found, config differences tabulated, plots drawn."""

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from efficientnet_jax import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _trial(runs_dir, name, lr, dropout, val=None, test=None, epochs=3, stopped_early=False):
  folder = runs_dir / name
  folder.mkdir()
  config = {"seed": 0, "model": {"arch": "b0", "dropout_rate": dropout},
            "optim": {"lr": lr, "plateau": {"factor": 0.1}}, "data": {"mean": [0.5, 0.4, 0.3]}}
  (folder / "config.json").write_text(json.dumps(config))
  if val is not None:
    (folder / "results.json").write_text(json.dumps({
        "best_checkpoint": {"val_top1": val, "step": 10, "epoch": 2},
        "test": {"top1": test, "top5": 1.0}, "epochs": epochs, "stopped_early": stopped_early}))


@pytest.fixture
def runs_dir(tmp_path):
  _trial(tmp_path, "a", 1e-3, 0.2, val=0.80, test=0.78)
  _trial(tmp_path, "b", 1e-3, 0.5, val=0.85, test=0.83, epochs=7, stopped_early=True)
  _trial(tmp_path, "c", 1e-2, 0.2, val=0.60, test=0.61)
  _trial(tmp_path, "d", 1e-2, 0.5)  # Still running: no results.json yet.
  (tmp_path / "not_a_trial").mkdir()
  return tmp_path


def test_table_shows_the_varied_fields_and_each_trials_results(runs_dir):
  trials = report.load_trials(str(runs_dir))
  assert [t.name for t in trials] == ["a", "b", "c", "d"]
  assert report.varied_fields(trials) == ["model.dropout_rate", "optim.lr"]

  text, pngs = report.write_report(str(runs_dir))
  lines = text.splitlines()
  assert lines[0] == ("| trial | model.dropout_rate | optim.lr | val top1 | test top1 | epochs "
                      "| status |")
  assert lines[2] == "| a | 0.2000 | 0.0010 | 0.8000 | 0.7800 | 3 | done |"
  assert lines[3] == "| b | 0.5000 | 0.0010 | 0.8500 | 0.8300 | 7 | early stop |"
  assert lines[5] == "| d | 0.5000 | 0.0100 | - | - | - | running/incomplete |"
  assert text in (runs_dir / "report.md").read_text()

  assert [os.path.basename(p) for p in pngs] == ["plot_model.dropout_rate.png", "plot_optim.lr.png"]
  for path in pngs:
    with Image.open(path) as image:
      assert image.size == (640, 400)
      colors = {c for _, c in image.getcolors(maxcolors=1 << 16)}
    for _, hex_color in report.METRICS:  # Both series are drawn.
      assert tuple(int(hex_color[i:i + 2], 16) for i in (1, 3, 5)) in colors


def test_command_line_prints_the_table_and_names_a_missing_folder(runs_dir, tmp_path):
  proc = subprocess.run([sys.executable, "-m", "efficientnet_jax.report", str(runs_dir)],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert "| c | 0.2000 | 0.0100 | 0.6000 | 0.6100 | 3 | done |" in proc.stdout
  assert "plot_optim.lr.png" in proc.stdout

  empty = tmp_path / "empty"
  empty.mkdir()
  proc = subprocess.run([sys.executable, "-m", "efficientnet_jax.report", str(empty)],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert f"{empty}: no trial folders" in proc.stderr and "--runs_dir" in proc.stderr
