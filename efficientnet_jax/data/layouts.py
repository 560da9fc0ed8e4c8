"""Find a local copy of Stanford Cars in any accepted layout and list its examples.

Accepted layouts (detected automatically, also one or two folders below the given one):
  official       cars_train/*.jpg, cars_test/*.jpg, devkit/{cars_meta,cars_train_annos}.mat
                 and cars_test_annos_withlabels.mat (torchvision's layout)
  kaggle_nested  the same with cars_train/cars_train/*.jpg, cars_test/cars_test/*.jpg
                 (and car_devkit/devkit/), as in Kaggle's jessicali9530 copy
  class_folders  train/<class name>/*.jpg, test/<class name>/*.jpg
  combined       car_ims/*.jpg + cars_annos.mat (a `test` flag per record)
  tfds           an already prepared TFDS cars196 or stanford_cars (array_record)
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import unicodedata
from typing import Any

import numpy as np
import scipy.io

from efficientnet_jax.data.official_classes import STANFORD_CARS_CLASSES
from efficientnet_jax.data.errors import WHERE_TO_GET_DATA, DataError

RAW_SPLITS = ("train", "test")  # The splits of a raw copy (validation is held out later).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
TFDS_NAMES = ("stanford_cars", "cars196")
_SEARCH_DEPTH = 2
_LAYOUT_HELP = """Accepted layouts:
  1. official:      cars_train/*.jpg, cars_test/*.jpg, devkit/cars_meta.mat,
                    devkit/cars_train_annos.mat, cars_test_annos_withlabels.mat
  2. kaggle_nested: cars_train/cars_train/*.jpg, cars_test/cars_test/*.jpg, devkit as in 1
  3. class_folders: train/<class name>/*.jpg, test/<class name>/*.jpg
  4. combined:      car_ims/*.jpg + cars_annos.mat
  5. tfds:          <data_dir>/cars196/<version>/ (array_record, as TFDS prepares it)"""


@dataclasses.dataclass(frozen=True)
class Example:
  """One labelled image file of a raw (not yet prepared) copy."""

  path: str  # Absolute path of the image file.
  name: str  # Path relative to the dataset root; unique within the copy.
  label: int  # 0-based class index.
  bbox: tuple[int, int, int, int] | None  # Devkit x1, y1, x2, y2 (1-based, inclusive).


@dataclasses.dataclass(frozen=True)
class RawDataset:
  """A raw copy in layouts 1-4: class names and the examples of each split."""

  layout: str
  root: str
  class_names: tuple[str, ...]
  splits: dict[str, list[Example]]


@dataclasses.dataclass(frozen=True)
class Detected:
  """Where a copy was found and in which layout."""

  layout: str
  root: str  # The folder holding the layout (for tfds: the versioned dataset folder).


def detect(root: str) -> Detected:
  """Finds the layout of the copy under `root` (breadth-first, two levels deep)."""
  if not os.path.isdir(root):
    raise DataError(f"Data folder {root!r} does not exist. {WHERE_TO_GET_DATA}")
  level = [root]
  for _ in range(_SEARCH_DEPTH + 1):
    for folder in level:
      found = _detect_here(folder)
      if found:
        return found
    level = [c for folder in level for c in _subfolders(folder)]
  listing = sorted(os.listdir(root))
  shown = ", ".join(listing[:20]) + (f", ... ({len(listing)} entries)" if len(listing) > 20 else "")
  raise DataError(
      f"No Stanford Cars copy found under {root!r} (searched {_SEARCH_DEPTH} folder levels "
      f"deep). Found: [{shown or 'an empty folder'}].\n{_LAYOUT_HELP}\n{WHERE_TO_GET_DATA}")


def read(detected: Detected) -> RawDataset:
  """Lists class names and examples of a copy in layouts 1-4."""
  readers = {
      "official": _read_devkit,
      "kaggle_nested": _read_devkit,
      "class_folders": _read_class_folders,
      "combined": _read_combined,
  }
  if detected.layout not in readers:
    raise DataError(f"Layout {detected.layout!r} at {detected.root!r} is read through TFDS, "
                    "not listed as files.")
  return readers[detected.layout](detected)


def _subfolders(folder: str, unreadable: list[str] | None = None) -> list[str]:
  """The non-hidden subfolders of `folder`, by name. Entries that cannot be followed (a
  symlink loop) are left out, or appended to `unreadable` as 'path (reason)'."""
  try:
    entries = sorted(os.scandir(folder), key=lambda e: e.name)
  except OSError:
    return []
  found = []
  for entry in entries:
    try:
      if entry.is_dir() and not entry.name.startswith("."):
        found.append(entry.path)
    except OSError as e:
      if unreadable is not None:
        unreadable.append(f"{entry.path} ({e.strerror})")
  return found


def _detect_here(folder: str) -> Detected | None:
  tfds_dir = find_tfds_dataset(folder)
  if tfds_dir:
    return Detected("tfds", tfds_dir)
  j = lambda *p: os.path.join(folder, *p)
  if os.path.isdir(j("cars_train", "cars_train")) and os.path.isdir(j("cars_test", "cars_test")):
    return Detected("kaggle_nested", folder)
  if os.path.isdir(j("cars_train")) and os.path.isdir(j("cars_test")):
    return Detected("official", folder)
  if os.path.isdir(j("car_ims")) and os.path.isfile(j("cars_annos.mat")):
    return Detected("combined", folder)
  if os.path.isdir(j("train")) and os.path.isdir(j("test")) and _subfolders(j("train")):
    return Detected("class_folders", folder)
  return None


def find_tfds_dataset(folder: str) -> str | None:
  """The versioned folder of the first prepared cars196/stanford_cars at `folder`, if any."""
  found = find_tfds_datasets(folder)
  return found[0] if found else None


def find_tfds_datasets(folder: str) -> list[str]:
  """Versioned folders of every prepared cars196/stanford_cars at `folder` (the newest
  version of each builder config, e.g. each storage of efficientnet_jax.data.storage).

  `folder` may be a TFDS data_dir, a dataset folder, a config folder or a versioned folder.
  """
  def prepared(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "dataset_info.json"))

  def newest(config_dir: str) -> list[str]:
    versions = [d for d in _subfolders(config_dir) if _is_version(d) and prepared(d)]
    return [max(versions, key=_version_key)] if versions else []

  def in_dataset(dataset_dir: str) -> list[str]:  # <name>/<version> and <name>/<config>/<version>
    found = newest(dataset_dir)
    for sub in _subfolders(dataset_dir):
      found += [] if _is_version(sub) else newest(sub)
    return found

  if prepared(folder):
    return [folder]
  found = [f for name in TFDS_NAMES if os.path.isdir(os.path.join(folder, name))
           for f in in_dataset(os.path.join(folder, name))]
  if found:
    return found
  if os.path.basename(os.path.normpath(folder)) in TFDS_NAMES:
    return in_dataset(folder)
  parent = os.path.basename(os.path.dirname(os.path.normpath(folder)))
  return newest(folder) if parent in TFDS_NAMES else []


def dataset_folder(versioned_dir: str) -> str:
  """The <name> folder (cars196 or stanford_cars) above a versioned folder, or the folder
  itself when none is: where find_tfds_datasets lists all its storages."""
  path = os.path.normpath(versioned_dir)
  for _ in range(2):
    path = os.path.dirname(path)
    if os.path.basename(path) in TFDS_NAMES:
      return path
  return versioned_dir


def _is_version(folder: str) -> bool:
  return re.fullmatch(r"\d+\.\d+\.\d+", os.path.basename(os.path.normpath(folder))) is not None


def _version_key(path: str) -> tuple[int, ...]:
  return tuple(int(p) for p in os.path.basename(path).split("."))


# --- .mat files -------------------------------------------------------------------------


def load_mat_records(path: str, key: str = "annotations") -> list[dict[str, Any]]:
  """Reads a MATLAB struct array (e.g. devkit annotations) as a list of plain dicts."""
  mat = _loadmat(path)
  if key not in mat:
    raise DataError(f"{path}: no {key!r} variable (found {sorted(k for k in mat if not k.startswith('__'))}).")
  structs = np.asarray(mat[key]).reshape(-1)
  fields = structs.dtype.names or ()
  return [{f: _scalar(s[f]) for f in fields} for s in structs]


def load_mat_strings(path: str, key: str = "class_names") -> tuple[str, ...]:
  """Reads a MATLAB cell array of strings (e.g. cars_meta.mat class_names)."""
  mat = _loadmat(path)
  if key not in mat:
    raise DataError(f"{path}: no {key!r} variable with the class names.")
  return tuple(str(_scalar(x)) for x in np.asarray(mat[key]).reshape(-1))


def _loadmat(path: str) -> dict[str, Any]:
  try:
    return scipy.io.loadmat(path)
  except Exception as e:  # scipy raises several types for damaged files.
    raise DataError(f"Cannot read MATLAB file {path}: {e}") from e


def _scalar(value: Any) -> Any:
  value = np.asarray(value).reshape(-1)
  if value.size != 1:
    raise DataError(f"Expected one value per field, got {value!r}.")
  value = value[0]
  if isinstance(value, np.ndarray):  # Nested cell / char array.
    return _scalar(value)
  return value.item() if isinstance(value, np.generic) else value


# --- layouts 1 and 2: devkit ------------------------------------------------------------


def _find_one(root: str, patterns: list[str]) -> str | None:
  for pattern in patterns:
    hits = sorted(glob.glob(os.path.join(glob.escape(root), pattern)))
    if hits:
      return hits[0]
  return None


def _read_devkit(detected: Detected) -> RawDataset:
  root = detected.root
  devkit_dirs = ["devkit", os.path.join("car_devkit", "devkit"), "car_devkit", "."]
  meta = _find_one(root, [os.path.join(d, "cars_meta.mat") for d in devkit_dirs])
  train_annos = _find_one(root, [os.path.join(d, "cars_train_annos.mat") for d in devkit_dirs])
  test_annos = _find_one(root, [os.path.join(d, "cars_test_annos_withlabels*.mat")
                                for d in devkit_dirs])
  if train_annos is None:
    raise DataError(f"{root}: layout {detected.layout} needs devkit/cars_train_annos.mat "
                    f"(the training labels), which is missing. {WHERE_TO_GET_DATA}")
  if test_annos is None:
    unlabeled = _find_one(root, [os.path.join(d, "cars_test_annos.mat") for d in devkit_dirs])
    found = f"Only {unlabeled} was found: it has no class labels. " if unlabeled else ""
    raise DataError(
        f"{root}: the test labels are missing. {found}Put cars_test_annos_withlabels.mat "
        f"(same records plus `class`) next to cars_train/ or into devkit/. {WHERE_TO_GET_DATA}")
  class_names = load_mat_strings(meta) if meta else STANFORD_CARS_CLASSES
  nested = detected.layout == "kaggle_nested"
  splits = {}
  for split, annos in (("train", train_annos), ("test", test_annos)):
    folder = os.path.join(f"cars_{split}", f"cars_{split}") if nested else f"cars_{split}"
    records = load_mat_records(annos)
    splits[split] = [
        _example(root, os.path.join(folder, str(r.get("fname", ""))), r, annos, class_names)
        for r in records]
  return RawDataset(detected.layout, root, class_names, splits)


def _example(root: str, name: str, record: dict[str, Any], source: str,
             class_names: tuple[str, ...]) -> Example:
  missing = [f for f in ("class", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2") if f not in record]
  if missing:
    raise DataError(f"{source}: annotation records lack the field(s) {missing} "
                    f"(fields found: {sorted(record)}).")
  label = int(record["class"]) - 1
  if not 0 <= label < len(class_names):
    raise DataError(f"{source}: record {name} has class {record['class']}, outside 1..{len(class_names)}.")
  bbox = tuple(int(record[f]) for f in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"))
  return Example(os.path.join(root, name), name.replace(os.sep, "/"), label, bbox)


# --- layout 4: car_ims + cars_annos.mat -------------------------------------------------


def _read_combined(detected: Detected) -> RawDataset:
  root = detected.root
  annos = os.path.join(root, "cars_annos.mat")
  class_names = load_mat_strings(annos)
  splits: dict[str, list[Example]] = {s: [] for s in RAW_SPLITS}
  for r in load_mat_records(annos):
    if "relative_im_path" not in r or "test" not in r:
      raise DataError(f"{annos}: records need `relative_im_path` and `test` (found {sorted(r)}).")
    split = "test" if int(r["test"]) else "train"
    splits[split].append(_example(root, str(r["relative_im_path"]), r, annos, class_names))
  return RawDataset(detected.layout, root, class_names, splits)


# --- layout 3: class folders ------------------------------------------------------------


def _canonical(name: str) -> str:
  """A folder name for loose matching: Unicode NFKC, case-folded, letters and digits of
  any script only ("Ram C/V" and "Ram C-V" agree; "日本 車" and "中国 车" do not)."""
  return "".join(ch for ch in unicodedata.normalize("NFKC", name).casefold() if ch.isalnum())


def class_order(folder_names: list[str]) -> tuple[str, ...]:
  """Class names in label order for class folders.

  If the folders are the 196 official classes (any punctuation, e.g. "Ram C-V Cargo Van"),
  one folder each, labels follow the official order and names; otherwise every folder is
  its own class, sorted by name.
  """
  official = {_canonical(n) for n in STANFORD_CARS_CLASSES}
  canonical = [_canonical(f) for f in folder_names]
  if len(set(canonical)) == len(canonical) == len(official) and set(canonical) == official:
    return STANFORD_CARS_CLASSES
  return tuple(sorted(folder_names))


def _label_folders(split_dir: str, folders: list[str],
                   class_names: tuple[str, ...]) -> dict[str, int]:
  """folder name -> label: the class of the same name, else the one class whose name agrees
  loosely (_canonical). Two folders never share a label; ambiguity is an error."""
  loose: dict[str, list[int]] = {}
  for label, name in enumerate(class_names):
    loose.setdefault(_canonical(name), []).append(label)
  exact = {name: label for label, name in enumerate(class_names)}
  labels: dict[str, int] = {}
  for folder in folders:
    if folder in exact:
      labels[folder] = exact[folder]
      continue
    matches = loose.get(_canonical(folder), []) if _canonical(folder) else []
    if len(matches) != 1:
      hint = (f"it matches {[class_names[m] for m in matches]} loosely" if matches
              else "no class has that name")
      raise DataError(f"{os.path.join(split_dir, folder)}: {hint}; train/ and test/ need the "
                      "same class folders: rename it to one of train/'s folder names exactly.")
    labels[folder] = matches[0]
  by_label: dict[int, list[str]] = {}
  for folder, label in labels.items():
    by_label.setdefault(label, []).append(folder)
  shared = [f for f in by_label.values() if len(f) > 1]
  if shared:
    raise DataError(f"{split_dir}: the folders {shared[0]} would share the class "
                    f"{class_names[labels[shared[0][0]]]!r}; keep one folder per class.")
  return labels


def _image_files(folder: str) -> list[str]:
  """Image file names in `folder`, by name. Links that lead nowhere (dangling, looping) are
  listed too: verification then reports them by name instead of dropping them silently."""
  names = []
  for entry in sorted(os.scandir(folder), key=lambda e: e.name):
    if not entry.name.lower().endswith(IMAGE_EXTENSIONS):
      continue
    try:
      listed = entry.is_file() or entry.is_symlink()
    except OSError:  # A symlink loop.
      listed = True
    if listed:
      names.append(entry.name)
  return names


def _read_class_folders(detected: Detected) -> RawDataset:
  root = detected.root
  unreadable: list[str] = []
  folders = {s: [os.path.basename(p) for p in _subfolders(os.path.join(root, s), unreadable)]
             for s in RAW_SPLITS}
  if unreadable:
    raise DataError(f"Cannot read the class folder(s) {', '.join(unreadable)}; remove or fix "
                    "them (a class folder must be a readable folder of images).")
  class_names = class_order(folders["train"])
  splits: dict[str, list[Example]] = {}
  for split in RAW_SPLITS:
    split_dir = os.path.join(root, split)
    labels = _label_folders(split_dir, folders[split], class_names)
    splits[split] = []
    for folder in folders[split]:
      files = _image_files(os.path.join(split_dir, folder))
      if not files:
        raise DataError(f"{os.path.join(split_dir, folder)}: no images "
                        f"({', '.join(IMAGE_EXTENSIONS)}); remove the empty class folder or "
                        "add its images.")
      splits[split] += [Example(os.path.join(split_dir, folder, f), f"{split}/{folder}/{f}",
                                labels[folder], None) for f in files]
    if not splits[split]:
      raise DataError(f"{split_dir}: no class folders with images ({', '.join(IMAGE_EXTENSIONS)}).")
  return RawDataset(detected.layout, root, class_names, splits)
