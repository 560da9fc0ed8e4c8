"""Synthetic Stanford-Cars-like copies in any raw layout, for demos, tests and benchmarks.

Each class has its own colour and shape, drawn at a random place on a noisy gradient, so a
tiny model can learn the classes; the shape's box is written as the bounding box.
"""

from __future__ import annotations

import colorsys
import os

import numpy as np
import scipy.io
from PIL import Image, ImageDraw

from efficientnet_jax.data.official_classes import STANFORD_CARS_CLASSES

LAYOUTS = ("official", "kaggle_nested", "class_folders", "combined")
BBOX_FIELDS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")


def make_synthetic_cars(
    root: str,
    layout: str = "class_folders",
    num_classes: int = 4,
    per_class_train: int = 16,
    per_class_test: int = 8,
    size: tuple[int, int] = (64, 48),
    seed: int = 0,
    test_labels: bool = True,
) -> str:
  """Writes a synthetic copy under `root` and returns `root`.

  Args:
    root: output folder (created).
    layout: one of LAYOUTS (see efficientnet_jax.data.layouts).
    num_classes: number of classes, named after the first official classes.
    per_class_train: training images per class.
    per_class_test: test images per class.
    size: image (width, height); (700, 480) is the typical Stanford Cars size.
    seed: seed of the image content.
    test_labels: official/kaggle layouts only: False writes no
      cars_test_annos_withlabels.mat (only the unlabelled devkit file).
  """
  if layout not in LAYOUTS:
    raise ValueError(f"layout={layout!r}; choose one of {LAYOUTS}.")
  if not 1 <= num_classes <= len(STANFORD_CARS_CLASSES):
    raise ValueError(f"num_classes={num_classes} must be in 1..{len(STANFORD_CARS_CLASSES)}.")
  rng = np.random.default_rng(seed)
  class_names = STANFORD_CARS_CLASSES[:num_classes]
  counts = {"train": per_class_train, "test": per_class_test}
  records: dict[str, list[dict]] = {"train": [], "test": []}
  serial = 0
  for split, per_class in counts.items():
    for i in range(per_class * num_classes):
      label = i % num_classes
      serial += 1
      index = len(records[split]) + 1
      name = _relative_path(layout, split, label, index, serial, class_names)
      path = os.path.join(root, name)
      os.makedirs(os.path.dirname(path), exist_ok=True)
      image, bbox = synthetic_image(rng, label, num_classes, size)
      image.save(path, quality=90)
      records[split].append({"name": name, "fname": os.path.basename(name),
                             "class": label + 1, **dict(zip(BBOX_FIELDS, bbox))})
  _write_annotations(root, layout, records, class_names, test_labels)
  return root


def synthetic_image(rng: np.random.Generator, label: int, num_classes: int,
                    size: tuple[int, int]) -> tuple[Image.Image, tuple[int, int, int, int]]:
  """One RGB image of class `label` and its devkit bbox (x1, y1, x2, y2, 1-based)."""
  w, h = size
  ramp = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
  base = rng.uniform(60, 190, size=3).astype(np.float32)
  pixels = base + 50 * ramp + rng.normal(0, 12, size=(h, w, 3)).astype(np.float32)
  image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
  bw, bh = int(w * rng.uniform(0.4, 0.7)), int(h * rng.uniform(0.4, 0.7))
  x1, y1 = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
  box = (x1, y1, x1 + bw - 1, y1 + bh - 1)
  colour = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(label / num_classes, 0.9, 0.9))
  draw = ImageDraw.Draw(image)
  shape = label % 3
  if shape == 0:
    draw.rectangle(box, fill=colour)
  elif shape == 1:
    draw.ellipse(box, fill=colour)
  else:
    draw.polygon([(box[0], box[3]), ((box[0] + box[2]) // 2, box[1]), (box[2], box[3])],
                 fill=colour)
  return image, (box[0] + 1, box[1] + 1, box[2] + 1, box[3] + 1)


def _relative_path(layout: str, split: str, label: int, index: int, serial: int,
                   class_names: tuple[str, ...]) -> str:
  if layout == "class_folders":
    return os.path.join(split, class_names[label].replace("/", "-"), f"{index:05d}.jpg")
  if layout == "combined":
    return os.path.join("car_ims", f"{serial:06d}.jpg")
  folder = f"cars_{split}"
  if layout == "kaggle_nested":
    folder = os.path.join(folder, folder)
  return os.path.join(folder, f"{index:05d}.jpg")


def write_mat_records(path: str, records: list[dict], fields: tuple[str, ...],
                      **extra: object) -> None:
  """Writes records as a MATLAB 1xN struct array `annotations` (the devkit's format)."""
  structs = np.zeros((1, len(records)), dtype=[(f, "O") for f in fields])
  for i, r in enumerate(records):
    for f in fields:
      structs[0, i][f] = r[f] if isinstance(r[f], str) else np.array([[r[f]]], dtype=np.uint16)
  scipy.io.savemat(path, {"annotations": structs, **extra})


def cell_array(strings: tuple[str, ...] | list[str]) -> np.ndarray:
  """A MATLAB 1xN cell array of strings (as in cars_meta.mat class_names)."""
  cells = np.empty((1, len(strings)), dtype=object)
  cells[0, :] = list(strings)
  return cells


def _write_annotations(root: str, layout: str, records: dict[str, list[dict]],
                       class_names: tuple[str, ...], test_labels: bool) -> None:
  if layout == "class_folders":
    return
  if layout == "combined":
    rows = [{**r, "relative_im_path": r["name"], "test": int(split == "test")}
            for split in ("train", "test") for r in records[split]]
    write_mat_records(os.path.join(root, "cars_annos.mat"), rows,
                      ("relative_im_path", *BBOX_FIELDS, "class", "test"),
                      class_names=cell_array(class_names))
    return
  devkit = os.path.join(root, "car_devkit", "devkit") if layout == "kaggle_nested" else os.path.join(root, "devkit")
  os.makedirs(devkit, exist_ok=True)
  labelled = (*BBOX_FIELDS, "class", "fname")
  scipy.io.savemat(os.path.join(devkit, "cars_meta.mat"), {"class_names": cell_array(class_names)})
  write_mat_records(os.path.join(devkit, "cars_train_annos.mat"), records["train"], labelled)
  write_mat_records(os.path.join(devkit, "cars_test_annos.mat"), records["test"],
                    (*BBOX_FIELDS, "fname"))
  if test_labels:
    write_mat_records(os.path.join(root, "cars_test_annos_withlabels.mat"), records["test"], labelled)
