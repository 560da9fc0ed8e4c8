"""export: every format run by its own runtime gives the JAX model's logits on real photos
(the ImageNet Lite0 weights at 64 px), with a dynamic batch; bfloat16 with a stated
tolerance; a run's weights export starts another fine-tune; the command line."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
import skimage.data
from flax import nnx
from PIL import Image

from efficientnet_jax import export, predict, run_model, steps
from efficientnet_jax.weights import load_weights
from finished_run import finished_run

SIZE = 64
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
RUNTIME_FORMATS = ("stablehlo", "savedmodel", "tflite", "onnx")
# A graph computing in bfloat16 (8 significant bits) rounds differently in each compiler
# (XLA for JAX and the serialized module, TF's XLA for the SavedModel): measured here at most
# 0.52% of the largest |logit| from the JAX bfloat16 model, whose own distance from the same
# weights in float32 is 5.0%. Exports computing in float32 are held to 1e-4 of float32 JAX.
BF16_TOLERANCE = 0.01


def _logits(classifier: predict.Classifier, images: np.ndarray) -> np.ndarray:
  """The JAX model's logits, as training and predict compute them."""
  mean, std = classifier.convention.mean, classifier.convention.std
  return np.asarray(nnx.jit(lambda m, x: m(steps.normalize(x, mean, std)))(classifier.model, images))


@pytest.fixture(scope="module")
def lite0():
  """The ImageNet Lite0 weights at 64 px, built with the portable depthwise convolution."""
  classifier = predict.load_classifier(weights="efficientnet-lite0", depthwise="conv")
  return dataclasses.replace(classifier, convention=dataclasses.replace(classifier.convention,
                                                                        image_size=SIZE))


@pytest.fixture(scope="module")
def photos(lite0):
  """scikit-image's sample photos as the model takes them: uint8 [4, 64, 64, 3]."""
  return np.stack([predict.crop_image(Image.fromarray(getattr(skimage.data, name)()[..., :3]),
                                      lite0.convention) for name in PHOTOS])


@pytest.mark.torch
@pytest.mark.parametrize("fmt", RUNTIME_FORMATS)
def test_float32_export_matches_jax_logits_with_a_dynamic_batch(fmt, lite0, photos, tmp_path):
  out = str(tmp_path / fmt)
  expected = _logits(lite0, photos)
  top2 = np.sort(expected, axis=-1)[:, -2:]
  assert (top2[:, 1] - top2[:, 0]).min() > 1e-2  # Decided top-1s: comparing them means something.

  metadata = export.export(lite0, fmt, out, verify=False)

  for batch in (photos, photos[1:2]):  # The batch size is not fixed at export.
    got = export.run_artifact(out, batch)
    assert got.shape == (len(batch), 1000) and got.dtype == np.float32
    np.testing.assert_allclose(got, _logits(lite0, batch), atol=1e-4, rtol=0)
    np.testing.assert_array_equal(got.argmax(-1), _logits(lite0, batch).argmax(-1))
  saved = json.load(open(os.path.join(out, export.EXPORT_FILE)))
  assert saved == json.loads(json.dumps(metadata))
  assert saved["input"]["shape"] == [None, SIZE, SIZE, 3] and saved["input"]["dtype"] == "uint8"
  assert saved["input"]["normalization"]["mean"] == pytest.approx(lite0.convention.mean)
  assert saved["input"]["preprocessing"]["crop_pct"] == lite0.convention.crop_pct
  assert saved["input"]["preprocessing"]["description"].startswith(
      "Decode to RGB uint8; resize the shorter side to 73 (aspect ratio kept), then centre-crop 64x64")
  assert saved["class_names"][281] == "tabby, tabby cat" and saved["compute_dtype"] == "float32"
  assert set(os.listdir(out)) >= {export.ARTIFACTS[fmt], export.EXPORT_FILE}
  if fmt == "onnx":
    props = {p.key: p.value for p in onnx.load(os.path.join(out, "model.onnx")).metadata_props}
    assert json.loads(props["efficientnet_jax"])["class_names"] == saved["class_names"]


@pytest.mark.torch
def test_stablehlo_runs_without_the_model_code(lite0, photos, tmp_path):
  out = tmp_path / "stablehlo"
  export.export(lite0, "stablehlo", str(out), verify=False)
  np.save(tmp_path / "photos.npy", photos)
  script = (
      "import sys, jax, numpy as np\n"
      f"exported = jax.export.deserialize(bytearray(open({str(out / 'model.jax_exported')!r}, 'rb').read()))\n"
      f"logits = np.asarray(exported.call(np.load({str(tmp_path / 'photos.npy')!r})))\n"
      "assert not [m for m in sys.modules if m.startswith('efficientnet_jax')]\n"
      f"np.save({str(tmp_path / 'logits.npy')!r}, logits)\n")

  done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        check=False, cwd=tmp_path, timeout=300)

  assert done.returncode == 0, done.stderr
  np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), _logits(lite0, photos), atol=1e-4,
                             rtol=0)


@pytest.mark.torch
def test_bfloat16_model_exports_within_the_stated_tolerance(lite0, photos, tmp_path):
  bf16 = dataclasses.replace(lite0, model=export.with_dtype(lite0.model, "bfloat16"))
  expected16, expected32 = _logits(bf16, photos), _logits(lite0, photos)
  scale = np.abs(expected16).max()

  for fmt, computes in (("stablehlo", "bfloat16"), ("savedmodel", "bfloat16"),
                        ("tflite", "float32")):  # TFLite has no bfloat16 kernels: float32.
    out = str(tmp_path / fmt)
    assert export.export(bf16, fmt, out, verify=False)["compute_dtype"] == computes
    got = export.run_artifact(out, photos)
    if computes == "bfloat16":
      assert np.abs(got - expected16).max() <= BF16_TOLERANCE * scale, fmt
    else:
      np.testing.assert_allclose(got, expected32, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(got.argmax(-1), expected16.argmax(-1))
  assert export.compute_dtype("onnx", "auto", "bfloat16") == "float32"
  with pytest.raises(ValueError, match="--dtype=bfloat16: onnxruntime has no bfloat16 kernels"):
    export.compute_dtype("onnx", "bfloat16", "bfloat16")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  return finished_run(tmp_path_factory)


def test_weights_export_of_a_run_starts_another_fine_tune(run, tmp_path):
  workdir, _ = run
  out = str(tmp_path / "weights")
  classifier = predict.load_classifier(workdir=workdir, depthwise="conv")

  export.export(classifier, "weights", out, verify=False)

  ported = load_weights(out)
  assert ported.class_names == classifier.class_names and ported.arch == "b0"
  assert ported.convention == classifier.convention  # The run's input convention travels.
  images = export.probe_images(classifier.convention, 3)
  config = run_model.load_config(workdir)
  config.pretrained = out  # The next fine-tune starts from the exported weights.
  model, convention = run_model.build(config)
  model.eval()
  assert (convention.mean, convention.std) == (classifier.convention.mean, classifier.convention.std)
  np.testing.assert_array_equal(_logits(dataclasses.replace(classifier, model=model), images),
                                _logits(classifier, images))
  config.model.num_classes = 3  # Another dataset: a fresh head on the same backbone.
  other, _ = run_model.build(config)
  np.testing.assert_array_equal(other.stem.conv.kernel[...], model.stem.conv.kernel[...])
  assert other.classifier.kernel[...].shape[-1] == 3
  by_weights = predict.load_classifier(weights=out, depthwise="conv")  # predict --weights=out
  assert by_weights.class_names == classifier.class_names


def _cli(*args: str) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  return subprocess.run([sys.executable, "-m", "efficientnet_jax.export", *args],
                        capture_output=True, text=True, check=False, env=env, timeout=600)


def test_cli_exports_verifies_and_prints_only_its_results(run, tmp_path):
  out = tmp_path / "tflite"

  done = _cli(f"--workdir={run[0]}", "--format=tflite", f"--output={out}")

  assert done.returncode == 0 and done.stderr == "", done.stderr  # No TF / JAX start-up lines.
  lines = done.stdout.splitlines()
  assert lines[0].startswith(f"Exported tflite to {out} (") and "b0, 4 classes, float32" in lines[0]
  assert lines[1] == ("  input 'images': uint8 [batch, 32, 32, 3] NHWC, normalized inside; "
                      "output 'logits': float32 [batch, 4]")
  assert lines[3].startswith("  verified with the TFLite interpreter: logits within ")
  verification = json.load(open(out / export.EXPORT_FILE))["verification"]
  assert verification["max_abs_logit_diff"] <= 1e-4 and len(lines) == 4


def test_cli_bad_input_is_one_line_naming_the_thing_and_the_fix(run, tmp_path):
  (tmp_path / "taken").mkdir()
  (tmp_path / "taken" / "file").write_text("x")

  unknown = _cli(f"--workdir={run[0]}", "--format=pickle", f"--output={tmp_path / 'new'}")
  taken = _cli(f"--workdir={run[0]}", "--format=onnx", f"--output={tmp_path / 'taken'}")

  assert unknown.returncode == 1 and unknown.stdout == ""
  assert unknown.stderr == ("Error: --format='pickle': unknown export format; use one of "
                            "weights, stablehlo, savedmodel, tflite, onnx.\n")
  assert taken.returncode == 1
  assert taken.stderr == (f"Error: --output={tmp_path / 'taken'} exists and is not an empty "
                          "directory; choose a new directory or delete it.\n")
