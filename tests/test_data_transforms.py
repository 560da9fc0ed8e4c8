"""Decode/augment transforms: one warp, seeded, identity-preserving, colour as one matrix."""

import dataclasses
import io
import re

import ml_collections
import numpy as np
import pytest
from PIL import Image

from efficientnet_jax.data import synthetic, transforms as T
from efficientnet_jax.data.errors import DataError

RECIPE = T.Options(image_size=32, hflip=0.5, rotate=25, translate=0.1, scale=(0.9, 1.1),
                   shear=8, brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05)


def _image(size=(48, 36), seed=0):
  return synthetic.synthetic_image(np.random.default_rng(seed), 1, 4, size)[0]


def _record(image, fmt="JPEG", bbox=(0.0, 0.0, 1.0, 1.0)):
  buffer = io.BytesIO()
  image.save(buffer, format=fmt, quality=95)
  return {"image": buffer.getvalue(), "label": 3, "bbox": np.array(bbox, np.float32),
          "file_name": "x.jpg"}


@pytest.mark.parametrize("method", T.TRAIN_WARPS)
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_identity_warp_returns_the_image(method, mode):
  image = _image().convert(mode)
  out = T.warp(image, T.Geometry(box=(0, 0, 48, 36)), (48, 36), method, fill=0)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(image))


def test_flip_alone_mirrors_and_box_maps_corners():
  image = _image()
  out = T.warp(image, T.Geometry(box=(0, 0, 48, 36), flip=True), (48, 36), "nearest", 0)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(image)[:, ::-1])
  m = T.forward_matrix(T.Geometry(box=(10, 5, 30, 25)), (64, 32))
  np.testing.assert_allclose(m @ [10, 5, 1], [0, 0, 1])
  np.testing.assert_allclose(m @ [30, 25, 1], [64, 32, 1])


def test_rotation_moves_content_about_the_centre():
  image = Image.new("L", (33, 33))
  image.putpixel((30, 16), 255)  # Right of the centre (16.5, 16.5).
  out = np.asarray(T.warp(image, T.Geometry(box=(0, 0, 33, 33), angle=90), (33, 33),
                          "nearest", 0))
  y, x = np.argwhere(out == 255)[0]
  assert abs(x - 16) <= 1 and y < 5  # Counter-clockwise: now above the centre.


def test_train_transform_is_seeded_and_deterministic():
  record = _record(_image())
  transform = T.TrainTransform(RECIPE)
  run = lambda seed: transform.random_map(dict(record), np.random.default_rng(seed))
  a, b, c = run(1), run(1), run(2)
  assert a["image"].shape == (32, 32, 3) and a["image"].dtype == np.uint8
  assert a["label"] == 3 and a["label"].dtype == np.int32
  np.testing.assert_array_equal(a["image"], b["image"])
  assert not np.array_equal(a["image"], c["image"])


def test_train_transform_without_augmentation_equals_a_plain_resize():
  image = _image((64, 64))
  options = T.Options(image_size=32, train_warp="supersample", jpeg_draft=False)
  out = T.TrainTransform(options).random_map(_record(image, "PNG"), np.random.default_rng(0))
  np.testing.assert_array_equal(out["image"], np.asarray(image.reduce(2)))


def test_grayscale_mode_outputs_one_channel_from_any_input():
  for image in (_image(), _image().convert("CMYK"), _image().convert("L")):
    options = T.Options(image_size=16, channels=1, brightness=0.3, contrast=0.3)
    out = T.TrainTransform(options).random_map(_record(image), np.random.default_rng(0))
    assert out["image"].shape == (16, 16, 1)
    assert T.EvalTransform(options).map(_record(image))["image"].shape == (16, 16, 1)


def test_colour_matrix_strengths():
  rng = np.random.default_rng(0)
  mean = np.array([100.0, 120.0, 140.0])
  np.testing.assert_allclose(T.colour_matrix(rng, mean, T.Options()),
                             np.hstack([np.eye(3), np.zeros((3, 1))]))
  m = T.colour_matrix(rng, mean, T.Options(brightness=0.5))
  assert 0.5 <= m[0, 0] <= 1.5 and np.allclose(m, np.diag(np.diag(m[:, :3])) @ np.eye(3, 4))
  gray = np.array([[[90, 90, 90]]], np.uint8)
  for options in (T.Options(hue=0.5), T.Options(saturation=1.0)):
    out = T.apply_colour(Image.fromarray(gray), T.colour_matrix(rng, mean, options))
    assert np.ptp(np.asarray(out)) <= 1  # Hue and saturation keep gray gray.


def test_full_desaturation_makes_rgb_gray():
  options = T.Options(saturation=1.0)
  rng = np.random.default_rng(0)
  while True:  # Draw until the factor is near 0 (fully desaturated).
    m = T.colour_matrix(rng, np.zeros(3), options)
    if np.allclose(m[0, :3], m[1, :3], atol=0.02):
      break
  out = np.asarray(T.apply_colour(_image(), m), np.int16)
  assert np.abs(out[..., 0] - out[..., 1]).max() <= 6


def test_eval_transform_crops_box_and_centre():
  image = Image.new("RGB", (100, 50), (0, 0, 255))
  image.paste((255, 0, 0), (40, 10, 60, 40))  # Red car in x 40-60, y 10-40.
  bbox = (10 / 50, 40 / 100, 40 / 50, 60 / 100)
  options = T.Options(image_size=8, crop_to_bbox=True, bbox_margin=0.0)
  out = T.EvalTransform(options).map(_record(image, "PNG", bbox))
  assert (out["image"][..., 0] > 200).all() and (out["image"][..., 2] < 50).all()
  assert out["mask"] and out["label"] == 3
  centre = T.Options(image_size=8, crop_pct=0.2, eval_resize="shorter_side")
  assert T.eval_box((0, 0, 100, 50), centre) == pytest.approx((45, 20, 55, 30))
  assert (T.EvalTransform(centre).map(_record(image, "PNG"))["image"][..., 0] > 200).all()


def test_from_config_rejects_unknown_values_by_name():
  fields = {f.name: getattr(T.Options(), f.name) for f in T.dataclasses.fields(T.Options)}
  config = ml_collections.ConfigDict({**fields, "train_warp": "lanczos"})
  with pytest.raises(DataError, match="config.data.train_warp='lanczos'"):
    T.Options.from_config(config)


def test_undecodable_bytes_name_the_file():
  record = {"image": b"garbage", "label": 0, "bbox": np.zeros(4), "file_name": "cars/1.jpg"}
  with pytest.raises(DataError, match="cars/1.jpg"):
    T.EvalTransform(T.Options()).map(record)


def test_mean_rgb_of_rgb_and_gray_images():
  pixels = np.zeros((4, 4, 3), np.uint8)
  pixels[:2] = (200, 100, 0)
  np.testing.assert_allclose(T.mean_rgb(Image.fromarray(pixels)), [100, 50, 0], atol=1)
  np.testing.assert_allclose(T.mean_rgb(Image.new("L", (3, 3), 77)), [77, 77, 77])


def _options_config(**overrides):
  """A config.data with every Options field at its default, then `overrides`."""
  fields = {f.name: getattr(T.Options(), f.name) for f in dataclasses.fields(T.Options)}
  return ml_collections.ConfigDict({**fields, **overrides})


@pytest.mark.parametrize("field,value", [
    ("auto_augment", "augmix"), ("ra_num_ops", -1), ("ra_magnitude", 11), ("ra_magnitude_std", -1),
    ("erase_prob", 1.5), ("erase_area", (0.5, 0.2)), ("erase_area", 0.3), ("erase_aspect", (0, 1)),
    ("erase_count", (0, 2)), ("erase_mode", "zeros")])
def test_from_config_rejects_bad_augmentation_values_by_name(field, value):
  config = _options_config(**{field: value})
  with pytest.raises(DataError, match="^" + re.escape(f"config.data.{field}={value!r}; allowed: ")):
    T.Options.from_config(config)


def test_from_config_takes_the_erasing_normalization_of_the_channels():
  config = _options_config(channels=1, gray_mean=(0.4,), gray_std=(0.2,))
  options = T.Options.from_config(config)
  assert (options.eraser.mean, options.eraser.std) == ((0.4,), (0.2,))
  out = T.TrainTransform(dataclasses.replace(options, erase_prob=1.0, image_size=16)).random_map(
      _record(_image()), np.random.default_rng(0))
  assert out["image"].shape == (16, 16, 1)
