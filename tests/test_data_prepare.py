"""Preparation into TFDS ArrayRecord: image verification, bad-image policy, labels, boxes."""

import io
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from PIL import Image

from efficientnet_jax.data import layouts, preparation, records, synthetic
from efficientnet_jax.data.official_classes import STANFORD_CARS_CLASSES
from efficientnet_jax.data.errors import DataError

SIZE = (40, 30)


def _copy_with_odd_images(root: str) -> dict[str, str]:
  """An official-layout copy whose train images include grayscale, CMYK, PNG, truncated."""
  synthetic.make_synthetic_cars(root, layout="official", num_classes=3, per_class_train=3,
                                per_class_test=2, size=SIZE)
  path = lambda n: os.path.join(root, "cars_train", n)
  Image.open(path("00001.jpg")).convert("L").save(path("00001.jpg"))
  Image.open(path("00002.jpg")).convert("CMYK").save(path("00002.jpg"))
  Image.open(path("00003.jpg")).save(path("00003.jpg"), format="PNG")
  data = open(path("00004.jpg"), "rb").read()
  open(path("00004.jpg"), "wb").write(data[: len(data) // 2])
  return {"gray": "cars_train/00001.jpg", "cmyk": "cars_train/00002.jpg",
          "png": "cars_train/00003.jpg", "truncated": "cars_train/00004.jpg"}


def _expected_labels(root: str) -> dict[str, tuple[int, tuple]]:
  raw = layouts.read(layouts.detect(root))
  return {e.name: (e.label, e.bbox) for s in raw.splits.values() for e in s}


def _records(dataset_dir: str, split: str) -> list[dict]:
  src = records.PreparedSource(dataset_dir, split)
  return [src[i] for i in range(len(src))]


def test_bad_images_fail_by_default_naming_each_file(tmp_path):
  root = str(tmp_path / "raw")
  odd = _copy_with_odd_images(root)
  open(os.path.join(root, "cars_test", "00002.jpg"), "wb").write(b"not an image")
  with pytest.raises(DataError) as err:
    preparation.prepare(root, str(tmp_path / "tfds"))
  message = str(err.value)
  assert "2 unreadable image(s)" in message
  assert odd["truncated"] in message and "cars_test/00002.jpg" in message
  assert odd["gray"] not in message and "bad_images='skip'" in message
  assert layouts.find_tfds_dataset(str(tmp_path / "tfds")) is None


def test_skip_policy_converts_odd_images_and_never_shifts_labels(tmp_path):
  root = str(tmp_path / "raw")
  odd = _copy_with_odd_images(root)
  expected = _expected_labels(root)
  dataset_dir = preparation.prepare(root, str(tmp_path / "tfds"), bad_images="skip", threads=2)
  assert records.class_names(dataset_dir) == STANFORD_CARS_CLASSES[:3]
  train, test = _records(dataset_dir, "train"), _records(dataset_dir, "test")
  assert len(train) == 8 and len(test) == 6
  names = [r["file_name"] for r in train]
  assert odd["truncated"] not in names and len(set(names)) == 8
  for r in train + test:
    label, (x1, y1, x2, y2) = expected[r["file_name"]]
    assert r["label"] == label, r["file_name"]
    np.testing.assert_allclose(
        r["bbox"], [(y1 - 1) / SIZE[1], (x1 - 1) / SIZE[0], y2 / SIZE[1], x2 / SIZE[0]], atol=1e-6)
    with Image.open(io.BytesIO(r["image"])) as image:
      assert (image.format, image.mode, image.size) == ("JPEG", "RGB", SIZE)
  by_name = {r["file_name"]: r for r in train}
  with Image.open(io.BytesIO(by_name[odd["gray"]]["image"])) as image:
    pixels = np.asarray(image, np.int16)
  assert np.abs(pixels[..., 0] - pixels[..., 2]).max() <= 3  # Still gray, stored as RGB.
  assert records.split_labels(dataset_dir, "train").tolist() == [r["label"] for r in train]


def _config(tmp_path, data_dir, tfds_dir):
  return ml_collections.ConfigDict({"dir": str(data_dir), "tfds_dir": str(tfds_dir),
                                    "bad_images": "error", "prepare_threads": 0,
                                    "storage": "original"})


def test_ensure_prepared_prepares_once_and_accepts_prepared_tfds(tmp_path, monkeypatch):
  root = synthetic.make_synthetic_cars(str(tmp_path / "raw"), layout="class_folders",
                                       num_classes=2, per_class_train=2, per_class_test=1,
                                       size=(16, 16))
  config = _config(tmp_path, root, tmp_path / "tfds")
  dataset_dir = preparation.ensure_prepared(config)
  assert dataset_dir == str(tmp_path / "tfds" / "stanford_cars" / "original" / "1.0.0")
  monkeypatch.setattr(preparation, "prepare", lambda *a, **k: pytest.fail("prepared twice"))
  assert preparation.ensure_prepared(config) == dataset_dir
  # Layout 5: the prepared folder as the source of another run, nothing to prepare.
  other = _config(tmp_path, tmp_path / "tfds", tmp_path / "elsewhere")
  monkeypatch.undo()
  assert preparation.ensure_prepared(other) == dataset_dir
  assert not os.path.exists(tmp_path / "elsewhere")


def test_ensure_prepared_without_source_says_which_flag(tmp_path):
  with pytest.raises(DataError, match="config.data.dir"):
    preparation.ensure_prepared(_config(tmp_path, "", tmp_path / "tfds"))


def test_cli_prepares_and_prints_the_dataset_dir(tmp_path):
  root = synthetic.make_synthetic_cars(str(tmp_path / "raw"), layout="combined", num_classes=2,
                                       per_class_train=2, per_class_test=1, size=(16, 16))
  result = subprocess.run(
      [sys.executable, "-m", "efficientnet_jax.prepare", f"--dir={root}",
       f"--tfds_dir={tmp_path / 'tfds'}"], capture_output=True, text=True, check=False,
      env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
  assert result.returncode == 0, result.stderr[-2000:]
  dataset_dir = result.stdout.strip().splitlines()[-1]
  assert records.split_labels(dataset_dir, "train").tolist().count(1) == 2
  assert len(records.split_labels(dataset_dir, "test")) == 2
