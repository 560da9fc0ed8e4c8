"""evaluate on a finished run: results.json reproduced, the report and its PNGs, flip TTA
checked against its definition and reported beside the plain metrics, several devices,
one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from efficientnet_jax import data, evaluate, optim, run_model, steps
from finished_run import finished_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  return finished_run(tmp_path_factory)


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"} | (env or {})
  return subprocess.run([sys.executable, "-m", "efficientnet_jax.evaluate", *args],
                        capture_output=True, text=True, check=False, env=env, timeout=600)


def test_reproduces_results_json_and_writes_the_report_beside_it(run):
  workdir, results = run
  results_bytes = open(os.path.join(workdir, "results.json"), "rb").read()

  report = evaluate.evaluate_run(workdir)

  test = results["test"]
  assert report["top1"] == test["top1"] and report["results_json_top1"] == test["top1"]
  assert report["top5"] == test["top5"]
  assert report["loss"] == pytest.approx(test["loss"], rel=1e-6)
  assert report["num_examples"] == 40
  assert report["per_class_accuracy"] == test["per_class_accuracy"]
  assert report["hardest_classes"] == test["hardest_classes"]
  assert (report["tta"], report["ema"], report["checkpoint"]["kind"]) == ("none", False, "best")
  counts = np.asarray(report["confusion_matrix"])
  assert counts.sum() == 40 and np.trace(counts) == round(test["top1"] * 40)
  off = counts - np.diag(np.diag(counts))
  assert sum(p["count"] for p in report["most_confused"]) == off.sum()  # 4 classes: all pairs fit.
  assert all(p["count"] > 0 for p in report["most_confused"])

  stem = os.path.join(workdir, "eval_test")
  assert json.load(open(stem + ".json")) == json.loads(json.dumps(report))
  confusion = np.asarray(Image.open(stem + "_confusion.png"))
  assert confusion.shape[0] == confusion.shape[1] >= 4 and confusion.shape[2] == 3
  wrong = 40 - np.trace(counts)
  if wrong:
    grid = Image.open(stem + "_misclassified.png")
    assert grid.width >= evaluate.TILE and grid.height > evaluate.TILE
  assert open(os.path.join(workdir, "results.json"), "rb").read() == results_bytes


def _flip_tta_metrics(workdir: str, ema: bool) -> tuple[float, float]:
  """(top1, loss) of log(mean softmax) over each test image and its mirror, by hand."""
  config = run_model.load_config(workdir)
  trained = run_model.load_trained(workdir, ema=ema)
  forward = nnx.jit(lambda model, x: jax.nn.softmax(model(x)))
  hits, losses = [], []
  for batch in data.eval_iterator(config.data, "test", global_batch_size=16):
    x = trained.normalize(batch["image"])
    probs = (np.asarray(forward(trained.model, x)) +
             np.asarray(forward(trained.model, x[:, :, ::-1]))) / 2
    mask = batch["mask"]
    hits += list(probs.argmax(-1)[mask] == batch["label"][mask])
    smoothed = optim.cross_entropy_loss(np.log(probs), batch["label"],
                                        config.optim.label_smoothing)
    losses += list(np.asarray(smoothed)[mask])
  return float(np.mean(hits)), float(np.mean(losses))


def test_flip_tta_is_checked_against_its_definition_and_reported_with_the_change(run):
  workdir, results = run

  report = evaluate.evaluate_run(workdir, ema=True, tta="flip", num_misclassified=0)

  top1, loss = _flip_tta_metrics(workdir, ema=True)
  assert report["tta"] == "flip" and report["top1"] == pytest.approx(top1, abs=1e-6)
  assert report["loss"] == pytest.approx(loss, abs=1e-5)
  assert report["without_tta"]["top1"] == results["test_ema"]["top1"]
  assert report["without_tta"]["loss"] == pytest.approx(results["test_ema"]["loss"], rel=1e-6)
  for key in ("top1", "top5", "loss"):
    assert report["tta_change"][key] == pytest.approx(report[key] - report["without_tta"][key])
  assert os.path.isfile(os.path.join(workdir, "eval_test_ema_flip.json"))


def test_tta_views_combine_to_log_mean_probability():
  views = jax.random.normal(jax.random.key(0), (2, 3, 5)) * 4
  expected = np.log(np.asarray(jax.nn.softmax(views, axis=-1)).mean(0))
  np.testing.assert_allclose(steps.combine_views(views), expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(steps.combine_views(views[:1]), views[0])
  with pytest.raises(ValueError, match="tta='rotate'"):
    steps.check_tta("rotate")


def test_cli_on_two_devices_counts_every_example_once(run):
  workdir, results = run

  # 40 examples in global batches of 6 split over 2 devices: the last batch is padded.
  done = _cli(f"--workdir={workdir}", "--checkpoint=best", "--config.eval.batch_size=6",
              "--num_misclassified=0",
              env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})

  assert done.returncode == 0 and done.stderr == "", done.stderr
  lines = done.stdout.splitlines()
  assert lines[0].endswith(", test split, 40 examples, 2 device(s), TTA none")
  assert lines[1].startswith(f"top1={results['test']['top1']:.4f} ")
  report = json.load(open(os.path.join(workdir, "eval_test.json")))
  assert report["devices"] == 2 and report["top1"] == results["test"]["top1"]


def test_bad_input_is_one_line_naming_the_thing_and_the_fix(run, tmp_path):
  started = tmp_path / "started"  # A run that wrote its files but no checkpoint yet.
  started.mkdir()
  for name in ("model.json", "config.json"):
    (started / name).write_bytes(open(os.path.join(run[0], name), "rb").read())

  no_checkpoint = _cli(f"--workdir={started}")
  unknown_field = _cli(f"--workdir={run[0]}", "--config.data.no_such_field=1")

  assert no_checkpoint.returncode == 1 and len(no_checkpoint.stderr.splitlines()) == 1
  assert no_checkpoint.stderr.startswith(f"Error: {started}/checkpoints/best: no finished 'best' "
                                         "checkpoint")
  assert "--checkpoint=best|latest|STEP" in no_checkpoint.stderr
  assert unknown_field.returncode == 1 and len(unknown_field.stderr.splitlines()) == 1
  assert unknown_field.stderr == ("Error: --config.data.no_such_field: the run's config has no "
                                  "field 'no_such_field'; its config.json lists the fields.\n")
