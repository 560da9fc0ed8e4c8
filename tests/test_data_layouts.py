"""Layout detection and reading of raw Stanford Cars copies (layouts 1-4 + tfds detection)."""

import os

import numpy as np
import pytest
import scipy.io

from efficientnet_jax.data import layouts, synthetic
from efficientnet_jax.data.official_classes import STANFORD_CARS_CLASSES
from efficientnet_jax.data.errors import DataError


def _box(i):
  return {"bbox_x1": 1 + i, "bbox_y1": 2 + i, "bbox_x2": 30 + i, "bbox_y2": 20 + i}


@pytest.mark.parametrize("layout", synthetic.LAYOUTS)
def test_detects_and_reads_every_layout(tmp_path, layout):
  root = synthetic.make_synthetic_cars(str(tmp_path / "copy"), layout=layout, num_classes=3,
                                       per_class_train=2, per_class_test=1, size=(16, 12))
  detected = layouts.detect(str(tmp_path))  # One level above the copy.
  assert detected == layouts.Detected(layout, root)
  raw = layouts.read(detected)
  assert raw.class_names == STANFORD_CARS_CLASSES[:3]
  assert {s: len(e) for s, e in raw.splits.items()} == {"train": 6, "test": 3}
  assert sorted(e.label for e in raw.splits["train"]) == [0, 0, 1, 1, 2, 2]
  for split in layouts.RAW_SPLITS:
    for e in raw.splits[split]:
      assert os.path.isfile(e.path), e
      assert e.path == os.path.join(root, e.name)
      assert (e.bbox is None) == (layout == "class_folders")
  assert len({e.name for s in raw.splits.values() for e in s}) == 9  # Names are unique.


def test_official_devkit_labels_are_zero_based_with_meta_names_and_boxes(tmp_path):
  root = tmp_path / "cars"
  for d in ("cars_train", "cars_test", "devkit"):
    (root / d).mkdir(parents=True)
  names = [f"Car {i}" for i in range(196)]
  scipy.io.savemat(root / "devkit" / "cars_meta.mat", {"class_names": synthetic.cell_array(names)})
  fields = (*synthetic.BBOX_FIELDS, "class", "fname")
  train = [{**_box(0), "class": 1, "fname": "00001.jpg"},
           {**_box(1), "class": 196, "fname": "00002.jpg"}]
  test = [{**_box(2), "class": 118, "fname": "00001.jpg"}]
  synthetic.write_mat_records(str(root / "devkit" / "cars_train_annos.mat"), train, fields)
  synthetic.write_mat_records(str(root / "cars_test_annos_withlabels.mat"), test, fields)
  raw = layouts.read(layouts.detect(str(root)))
  assert raw.layout == "official" and raw.class_names == tuple(names)
  assert [(e.name, e.label, e.bbox) for e in raw.splits["train"]] == [
      ("cars_train/00001.jpg", 0, (1, 2, 30, 20)), ("cars_train/00002.jpg", 195, (2, 3, 31, 21))]
  assert [(e.name, e.label) for e in raw.splits["test"]] == [("cars_test/00001.jpg", 117)]


def test_class_out_of_range_names_the_file(tmp_path):
  root = synthetic.make_synthetic_cars(str(tmp_path), layout="official", num_classes=2,
                                       per_class_train=1, per_class_test=1, size=(8, 8))
  bad = [{**_box(0), "class": 3, "fname": "00001.jpg"}]
  synthetic.write_mat_records(os.path.join(root, "devkit", "cars_train_annos.mat"), bad,
                              (*synthetic.BBOX_FIELDS, "class", "fname"))
  with pytest.raises(DataError, match=r"cars_train_annos.mat.*class 3, outside 1..2"):
    layouts.read(layouts.detect(root))


def test_unlabelled_test_annotations_are_called_out(tmp_path):
  root = synthetic.make_synthetic_cars(str(tmp_path), layout="kaggle_nested", num_classes=2,
                                       per_class_train=1, per_class_test=1, size=(8, 8),
                                       test_labels=False)
  with pytest.raises(DataError, match=r"cars_test_annos.mat was found: it has no class labels"):
    layouts.read(layouts.detect(root))


def test_kaggle_labels_file_with_copy_suffix_is_found(tmp_path):
  root = synthetic.make_synthetic_cars(str(tmp_path), layout="kaggle_nested", num_classes=2,
                                       per_class_train=1, per_class_test=2, size=(8, 8))
  os.rename(os.path.join(root, "cars_test_annos_withlabels.mat"),
            os.path.join(root, "cars_test_annos_withlabels (1).mat"))
  raw = layouts.read(layouts.detect(root))
  assert [e.label for e in raw.splits["test"]] == [0, 1, 0, 1]


def test_detection_failure_lists_layouts_found_entries_and_source(tmp_path):
  (tmp_path / "images").mkdir()
  (tmp_path / "notes.txt").write_text("x")
  with pytest.raises(DataError) as err:
    layouts.detect(str(tmp_path))
  message = str(err.value)
  for expected in ("images", "notes.txt", "official", "kaggle_nested", "class_folders",
                   "combined", "tfds", "kaggle.com"):
    assert expected in message


def test_missing_folder_is_reported(tmp_path):
  with pytest.raises(DataError, match="does not exist"):
    layouts.detect(str(tmp_path / "nope"))


def test_official_class_folders_follow_official_order(tmp_path):
  for split in ("train", "test"):
    for name in STANFORD_CARS_CLASSES:
      folder = tmp_path / split / name.replace("/", "-")
      folder.mkdir(parents=True)
      (folder / ("a.jpg" if split == "train" else "b.JPG")).write_bytes(b"")
  raw = layouts.read(layouts.detect(str(tmp_path)))
  assert raw.class_names == STANFORD_CARS_CLASSES
  for split in ("train", "test"):
    labels = {os.path.basename(os.path.dirname(e.path)): e.label for e in raw.splits[split]}
    assert labels == {n.replace("/", "-"): i for i, n in enumerate(STANFORD_CARS_CLASSES)}
  assert labels["Ram C-V Cargo Van Minivan 2012"] == STANFORD_CARS_CLASSES.index(
      "Ram C/V Cargo Van Minivan 2012")


def test_unknown_class_folders_are_sorted_and_test_must_match_train(tmp_path):
  for split, names in (("train", ["b", "a"]), ("test", ["a", "c"])):
    for name in names:
      (tmp_path / split / name).mkdir(parents=True)
      (tmp_path / split / name / "x.png").write_bytes(b"")
  with pytest.raises(DataError, match=r"test/c: no class has that name"):
    layouts.read(layouts.detect(str(tmp_path)))
  (tmp_path / "test" / "c" / "x.png").unlink()
  (tmp_path / "test" / "c").rmdir()
  raw = layouts.read(layouts.detect(str(tmp_path)))
  assert raw.class_names == ("a", "b")
  assert [(e.name, e.label) for e in raw.splits["train"]] == [("train/a/x.png", 0),
                                                            ("train/b/x.png", 1)]


def test_combined_layout_uses_test_flag(tmp_path):
  root = synthetic.make_synthetic_cars(str(tmp_path), layout="combined", num_classes=2,
                                       per_class_train=3, per_class_test=1, size=(8, 8))
  raw = layouts.read(layouts.detect(root))
  assert [e.name for e in raw.splits["test"]] == ["car_ims/000007.jpg", "car_ims/000008.jpg"]
  assert np.bincount([e.label for e in raw.splits["train"]]).tolist() == [3, 3]


def test_tfds_dataset_dirs_are_found_at_any_level(tmp_path):
  version = tmp_path / "tfds" / "cars196" / "2.1.0"
  version.mkdir(parents=True)
  (version / "dataset_info.json").write_text("{}")
  (tmp_path / "tfds" / "cars196" / "2.0.0").mkdir()  # Unprepared older version: ignored.
  for folder in (tmp_path, tmp_path / "tfds", version.parent, version):
    assert layouts.detect(str(folder)) == layouts.Detected("tfds", str(version))
