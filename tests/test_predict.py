"""predict on a finished run: its test images reproduce results.json, TTA, folders and globs,
unreadable images, one-line errors and a quiet command line."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from efficientnet_jax import data, predict, run_model, steps
from efficientnet_jax.data.records import PreparedSource
from finished_run import finished_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  return finished_run(tmp_path_factory)


@pytest.fixture(scope="module")
def test_images(run, tmp_path_factory):
  """The run's test split as files <index>_<label>.jpg (the prepared records' JPEG bytes)."""
  config = run_model.load_config(run[0])
  source = PreparedSource(data.ensure_prepared(config.data), "test")
  folder = tmp_path_factory.mktemp("test_images")
  for i in range(len(source)):
    record = source[i]
    (folder / f"{i:03d}_{record['label']}.jpg").write_bytes(record["image"])
  return str(folder)


def _eval_pipeline_probabilities(workdir: str) -> np.ndarray:
  """Softmax of the run's best model over the test split as its evaluation feeds it."""
  config = run_model.load_config(workdir)
  trained = run_model.load_trained(workdir)
  forward = nnx.jit(lambda model, x: jax.nn.softmax(model(x)))
  rows = []
  for batch in data.eval_iterator(config.data, "test", global_batch_size=16):
    probs = np.asarray(forward(trained.model, trained.normalize(batch["image"])))
    rows.append(probs[batch["mask"]])
  return np.concatenate(rows)


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"} | (env or {})
  return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                        check=False, env=env, timeout=600)


def test_cli_reproduces_results_json_and_reports_unreadable_images(run, test_images, tmp_path):
  workdir, results = run
  corrupt = tmp_path / "corrupt.jpg"
  corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
  output = tmp_path / "preds.csv"

  done = _cli("efficientnet_jax.predict", f"--workdir={workdir}", test_images, str(corrupt),
              str(tmp_path / "missing.jpg"), f"--output={output}")

  assert done.returncode == 1  # Some inputs failed; the others were predicted.
  assert done.stdout == f"Wrote 40 predictions to {output}\n"
  errors = done.stderr.splitlines()  # Our messages only: no JAX / TF start-up lines.
  assert len(errors) == 3 and all(line.startswith("Error: ") for line in errors), errors
  assert errors[0] == f"Error: {tmp_path / 'missing.jpg'}: no such file or folder."
  assert errors[1].startswith(f"Error: {corrupt}: cannot read this image (")
  assert errors[2] == "Error: 2 of 42 inputs could not be predicted."

  with open(output) as f:
    rows = [r for r in csv.DictReader(f) if r["rank"] == "1"]
  rows.sort(key=lambda r: r["image"])
  labels = [int(os.path.basename(r["image"]).split("_")[1].split(".")[0]) for r in rows]
  predicted = [int(r["label"]) for r in rows]
  assert len(rows) == 40
  assert np.sum(np.equal(predicted, labels)) == round(results["test"]["top1"] * 40)
  # Image by image, the probabilities the run's own evaluation computes (files sorted by
  # record index): the same preprocessing, not just the same accuracy.
  expected = _eval_pipeline_probabilities(workdir)
  np.testing.assert_array_equal(predicted, expected.argmax(-1))
  np.testing.assert_allclose([float(r["probability"]) for r in rows], expected.max(-1), atol=1e-6)


def test_flip_tta_averages_the_probabilities_of_image_and_mirror(run, test_images):
  classifier = predict.load_classifier(workdir=run[0])
  paths = sorted(os.path.join(test_images, f) for f in os.listdir(test_images))[:6]
  k = len(classifier.class_names)

  results = list(predict.predict(classifier, paths, top_k=k, batch_size=4, tta="flip"))

  pixels = np.stack([classifier.preprocess(p) for p in paths])
  mean, std = classifier.convention.mean, classifier.convention.std
  forward = nnx.jit(lambda model, x: jax.nn.softmax(model(steps.normalize(x, mean, std))))
  plain = np.asarray(forward(classifier.model, pixels))
  mirror = np.asarray(forward(classifier.model, pixels[:, :, ::-1]))
  expected = (plain + mirror) / 2
  for result, row, plain_row in zip(results, expected, plain):
    got = np.zeros(k)
    for index, prob, _ in result.top:
      got[index] = prob
    np.testing.assert_allclose(got, row, atol=1e-6)
    assert result.plain_top1 == plain_row.argmax()
  # The mirror images change the probabilities by well over the 1e-6 compared above.
  assert np.abs(mirror - plain).max() > 1e-5


def test_cli_with_a_run_directory_as_weights_prints_top_k_and_tta_changes(run, test_images):
  paths = sorted(os.path.join(test_images, f) for f in os.listdir(test_images))[:3]

  done = _cli("efficientnet_jax.predict", f"--weights={run[0]}", "--tta=flip", "--top_k=2", *paths)

  assert done.returncode == 0 and done.stderr == "", done.stderr
  lines = done.stdout.splitlines()
  classifier = predict.load_classifier(workdir=run[0])
  expected = list(predict.predict(classifier, paths, top_k=2, tta="flip"))
  for i, result in enumerate(expected):
    assert lines[3 * i] == result.path
    for line, (index, prob, name) in zip(lines[3 * i + 1:3 * i + 3], result.top):
      assert line.split(None, 2) == [f"{prob:.3f}", str(index), name]
  changed = sum(r.plain_top1 != r.top[0][0] for r in expected)
  assert lines[9] == f"flip TTA changed the top-1 class of {changed} of 3 images"
  assert len(lines) == 10 + changed


def test_missing_workdir_is_one_line_naming_the_flag(tmp_path):
  done = _cli("efficientnet_jax.predict", f"--workdir={tmp_path / 'nope'}", "x.jpg")

  assert done.returncode == 1 and done.stdout == ""
  assert done.stderr == (f"Error: --workdir={tmp_path / 'nope'}: no such directory; pass the "
                         "--workdir of a training run (python -m efficientnet_jax.main "
                         "--workdir=...).\n")


def test_inputs_expand_folders_and_globs(tmp_path):
  (tmp_path / "a" / "b").mkdir(parents=True)
  for name in ("a/1.jpg", "a/b/2.PNG", "a/notes.txt", "3.jpeg"):
    (tmp_path / name).write_bytes(b"")
  (tmp_path / "empty").mkdir()

  paths, errors = predict.expand_inputs([str(tmp_path / "a"), str(tmp_path / "*.jpeg"),
                                         str(tmp_path / "a/notes.txt"), str(tmp_path / "empty"),
                                         str(tmp_path / "*.gif")])

  assert paths == [str(tmp_path / "a/1.jpg"), str(tmp_path / "a/b/2.PNG"),
                   str(tmp_path / "3.jpeg"), str(tmp_path / "a/notes.txt")]
  assert errors == [f"{tmp_path / 'empty'}: no images in this folder (looked for "
                    f"{', '.join(predict.IMAGE_EXTENSIONS)}).",
                    f"{tmp_path / '*.gif'}: no file matches this pattern."]
