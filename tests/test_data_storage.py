"""Storages of prepared data: reduced JPEGs and decoded pixels against decoding the original
then resizing, labels and boxes kept, metadata, coexisting variants, resolution checks."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from efficientnet_jax.config import get_config
from efficientnet_jax.data import builder, layouts, pipeline, preparation, records, synthetic
from efficientnet_jax.data import transforms as T
from efficientnet_jax.data.errors import DataError
from efficientnet_jax.data.storage import Storage, check_resolution

SOURCE = (96, 64)  # width, height of the raw JPEGs
STORED = 40  # storage_size: reduced/decoded images are 60x40
# Mean absolute difference in uint8 levels, on these noisy synthetic images. Measured:
# reduced JPEGs (quality 90, 60x40 px) 3.7-4.6 from the Lanczos reference (2.1-2.7 at
# 258 px from 700x480); 32 px transforms of reduced / decoded images 2.5-3.8 / 0.6-2.3
# from the same transforms of the original.
REDUCED_TOL = 6.0
TRANSFORM_TOL = 5.0


def _config(root, storage, **fields):
  c = get_config().data
  c.dir, c.tfds_dir = str(root / "raw"), str(root / "tfds")
  c.storage, c.storage_size, c.image_size, c.workers = storage, STORED, 32, 0
  c.update(fields)
  return c


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """One raw copy with a truncated image (skipped), prepared in all three storages into one
  tfds_dir; {storage: dataset_dir}, the raw root and the expected (label, bbox) by name."""
  root = tmp_path_factory.mktemp("cars")
  raw = synthetic.make_synthetic_cars(str(root / "raw"), layout="official", num_classes=3,
                                      per_class_train=3, per_class_test=1, size=SOURCE)
  truncated = os.path.join(raw, "cars_train", "00002.jpg")
  data = open(truncated, "rb").read()
  open(truncated, "wb").write(data[: len(data) // 2])
  examples = layouts.read(layouts.detect(raw)).splits
  expected = {e.name: (e.label, e.bbox) for s in examples.values() for e in s}
  dirs = {kind: preparation.ensure_prepared(_config(root, kind, bad_images="skip"))
          for kind in ("original", "reduced", "decoded")}
  return dirs, root, expected


def _records(dataset_dir, split="train"):
  source = records.PreparedSource(dataset_dir, split)
  return {r["file_name"]: r for r in (source[i] for i in range(len(source)))}


def _as_array(image):
  if isinstance(image, np.ndarray):
    return image.astype(np.int16)
  return np.asarray(Image.open(io.BytesIO(image)).convert("RGB"), np.int16)


def test_stored_pixels_match_decoding_the_original_then_resizing(prepared):
  dirs, root, expected = prepared
  for split in ("train", "test"):
    original = _records(dirs["original"], split)
    assert "cars_train/00002.jpg" not in original and len(original) == len(
        [n for n in expected if n.startswith(f"cars_{split}/")]) - (split == "train")
    for kind in ("reduced", "decoded"):
      stored = _records(dirs[kind], split)
      assert sorted(stored) == sorted(original)
      for name, record in stored.items():
        label, (x1, y1, x2, y2) = expected[name]
        assert record["label"] == original[name]["label"] == label, name
        np.testing.assert_array_equal(record["bbox"], original[name]["bbox"])
        np.testing.assert_allclose(record["bbox"], [(y1 - 1) / SOURCE[1], (x1 - 1) / SOURCE[0],
                                                    y2 / SOURCE[1], x2 / SOURCE[0]], atol=1e-6)
        with Image.open(os.path.join(root, "raw", name)) as image:  # This file's pixels.
          reference = np.asarray(image.convert("RGB").resize((60, 40), Image.Resampling.LANCZOS),
                                 np.int16)
        pixels = _as_array(record["image"])
        assert pixels.shape == reference.shape
        if kind == "decoded":
          np.testing.assert_array_equal(pixels, reference)
        else:
          assert np.abs(pixels - reference).mean() < REDUCED_TOL, name


def test_transforms_read_every_storage_through_the_same_entry(prepared):
  dirs, _, _ = prepared
  options = T.Options(image_size=32, crop_pct=0.875, hflip=0.5, rotate=10, brightness=0.2)
  train, evaluate = T.TrainTransform(options), T.EvalTransform(options)
  original = _records(dirs["original"])
  for kind in ("reduced", "decoded"):
    for name, record in _records(dirs[kind]).items():
      for transform in (lambda r: evaluate.map(r),
                        lambda r: train.random_map(r, np.random.default_rng(7))):
        ours, theirs = transform(record), transform(original[name])
        assert ours["image"].shape == (32, 32, 3) and ours["label"] == theirs["label"]
        diff = np.abs(ours["image"].astype(np.int16) - theirs["image"]).mean()
        assert diff < TRANSFORM_TOL, (kind, name, diff)


def test_metadata_says_what_is_stored_and_variants_coexist(prepared, monkeypatch):
  dirs, root, _ = prepared
  assert preparation.stored_as(dirs["original"]) == Storage()
  assert preparation.stored_as(dirs["reduced"]) == Storage("reduced", STORED, 90)
  assert preparation.stored_as(dirs["decoded"]) == Storage("decoded", STORED)
  with open(os.path.join(dirs["decoded"], "metadata.json")) as f:
    assert json.load(f)["storage"] == "decoded"
  assert sorted(layouts.find_tfds_datasets(str(root / "tfds"))) == sorted(dirs.values())
  assert len(set(dirs.values())) == 3
  monkeypatch.setattr(preparation, "prepare", lambda *a, **k: pytest.fail("prepared again"))
  for kind, dataset_dir in dirs.items():  # Each config finds its own copy.
    assert preparation.ensure_prepared(_config(root, kind)) == dataset_dir
  with pytest.raises(DataError, match=r"No reduced images \(shorter side 50 px.*holds.*original "
                     "JPEGs.*config.data.dir") as err:
    preparation.ensure_prepared(_config(root, "reduced", storage_size=50, dir=""))
  assert "\n" not in str(err.value)
  monkeypatch.undo()
  # Prepared data given as the source copy (layout 5) must hold what the config asks for.
  with pytest.raises(DataError, match=r"holding.*not the reduced images \(shorter side 50") as err:
    preparation.ensure_prepared(_config(root, "reduced", storage_size=50,
                                        dir=str(root / "tfds"), tfds_dir=str(root / "other")))
  assert "\n" not in str(err.value)
  assert preparation.ensure_prepared(_config(root, "decoded", dir=str(root / "tfds"),
                                             tfds_dir=str(root / "other"))) == dirs["decoded"]


def test_data_prepared_before_storages_reads_as_original(tmp_path):
  legacy = tmp_path / "tfds" / "stanford_cars" / "1.0.0"
  legacy.mkdir(parents=True)
  (legacy / "dataset_info.json").write_text("{}")
  assert layouts.find_tfds_datasets(str(tmp_path / "tfds")) == [str(legacy)]
  assert Storage.from_metadata({"source_layout": "official"}) == Storage()


def test_run_needing_more_pixels_than_stored_fails_in_one_line(prepared):
  dirs, root, _ = prepared
  stored = Storage("decoded", 258)
  assert check_resolution(T.Options(image_size=224, crop_pct=0.875, scale=(0.9, 1.1)), stored,
                          "d") is None
  with pytest.raises(DataError, match=r"image_size=240 with crop_pct=0.875 needs 275 px.*"
                     r"storage_size=275") as err:
    check_resolution(T.Options(image_size=240, crop_pct=0.875), stored, "d")
  assert "\n" not in str(err.value)
  assert check_resolution(T.Options(image_size=240, crop_pct=1.0), Storage(), "d") is None
  rrc = check_resolution(T.Options(image_size=224, train_crop="random_resized_crop",
                                  scale=(0.9, 1.1)), stored, "d")  # 224 x 1.1 / sqrt(0.25)
  assert "random zoom/crops (up to 493 px)" in rrc and "upsampled" in rrc
  assert "crop_to_bbox" in check_resolution(T.Options(image_size=200, crop_to_bbox=True),
                                            stored, "d")
  # Through the pipeline: the stored 40 px cannot feed 48 px.
  with pytest.raises(DataError, match="needs 48 px"):
    pipeline.train_iterator(_config(root, "decoded", image_size=48, crop_pct=1.0),
                            global_batch_size=2, seed=0, process_index=0, process_count=1)


def test_storage_fields_are_checked_with_their_names():
  config = get_config().data
  assert Storage.from_config(config).size == 258  # ceil(1.15 x 224)
  config.storage = "png"
  with pytest.raises(DataError, match="config.data.storage='png'"):
    Storage.from_config(config)
  config.storage, config.storage_quality = "reduced", 0
  with pytest.raises(DataError, match="config.data.storage_quality=0"):
    Storage.from_config(config)


def test_prepare_cli_flags_mirror_the_storage_fields(prepared, tmp_path):
  _, root, _ = prepared
  run = lambda *flags: subprocess.run(
      [sys.executable, "-m", "efficientnet_jax.prepare", f"--dir={root / 'raw'}",
       f"--tfds_dir={tmp_path}", "--bad_images=skip", *flags], capture_output=True, text=True,
      check=False, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
  bad = run("--storage=reduced", "--storage_quality=0")
  assert bad.returncode == 1 and bad.stderr.strip() == (
      "Error: config.data.storage_quality=0 must be in 1..100.")
  done = run("--storage=decoded", "--storage_size=0", "--image_size=20")
  assert done.returncode == 0, done.stderr[-2000:]
  assert preparation.stored_as(done.stdout.strip().splitlines()[-1]) == Storage("decoded", 23)


def test_decoded_shards_are_rewritten_uncompressed(tmp_path):
  from array_record.python import array_record_module

  path = str(tmp_path / "stanford_cars-train.array_record-00000-of-00001")
  records_in = [bytes([i]) * 300_000 for i in range(5)]  # Compress to almost nothing.
  writer = array_record_module.ArrayRecordWriter(path, "group_size:1")  # As TFDS writes.
  for r in records_in:
    writer.write(r)
  writer.close()
  assert os.path.getsize(path) < 300_000
  builder.store_uncompressed(str(tmp_path))
  assert os.path.getsize(path) >= 1_500_000 and os.listdir(tmp_path) == [os.path.basename(path)]
  reader = array_record_module.ArrayRecordReader(path)
  assert reader.read(list(range(5))) == records_in
