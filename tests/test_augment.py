"""Automatic augmentation and random erasing: each op against its definition (PIL), the
policies' sampling statistics, erasing's ranges and fills, worker-count independence."""

import collections
import io
import math

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from efficientnet_jax.data import augment, erasing, pipeline, synthetic, transforms as T
from efficientnet_jax.data.augment_ops import Op, apply_photometric, warp_matrix
from test_data_pipeline import config  # noqa: F401 (fixture: a prepared synthetic copy)


def _pixels(mode="RGB", low=0, high=256, size=(19, 13), seed=0):
  rng = np.random.default_rng(seed)
  shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
  return Image.fromarray(rng.integers(low, high, shape).astype(np.uint8), mode)


def _solarize_add(image, add):  # timm's definition.
  lut = [min(255, i + add) if i < 128 else i for i in range(256)]
  return image.point(lut * len(image.getbands()))


REFERENCES = {  # op -> (PIL reference, largest difference allowed).
    "brightness": (lambda im, v: ImageEnhance.Brightness(im).enhance(v), 0),
    "color": (lambda im, v: ImageEnhance.Color(im).enhance(v), 2),  # One matrix, rounded once.
    "contrast": (lambda im, v: ImageEnhance.Contrast(im).enhance(v), 1),  # Mean from channels.
    "sharpness": (lambda im, v: ImageEnhance.Sharpness(im).enhance(v), 0),
    # 0 bits (timm's magnitude 10): black, as Pillow did before it refused 0.
    "posterize": (lambda im, v: ImageOps.posterize(im, int(v)) if v else im.point(lambda _: 0), 0),
    "solarize": (ImageOps.solarize, 0),
    "solarize_add": (_solarize_add, 0),
    "autocontrast": (lambda im, v: ImageOps.autocontrast(im), 0),
    "equalize": (lambda im, v: ImageOps.equalize(im), 0),
    "invert": (lambda im, v: ImageOps.invert(im), 0),
}
CASES = [("brightness", 0.3), ("brightness", 1.7), ("color", 0.1), ("color", 1.9),
         ("contrast", 0.2), ("contrast", 1.8), ("sharpness", 0.1), ("sharpness", 1.9),
         ("posterize", 0), ("posterize", 3), ("posterize", 8), ("solarize", 0),
         ("solarize", 100.5), ("solarize", 256), ("solarize_add", 50), ("solarize_add", 110),
         ("autocontrast", 0), ("equalize", 0), ("invert", 0)]


def _diff(a, b):
  return int(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max())


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("name,value", CASES)
def test_photometric_op_matches_pil(name, value, mode):
  reference, tolerance = REFERENCES[name]
  for image in (_pixels(mode), _pixels(mode, 60, 181, seed=1)):  # Full and narrow range.
    out = apply_photometric(image, [Op(name, value)])
    assert out.mode == mode
    assert _diff(out, reference(image, value)) <= (tolerance if mode == "RGB" else 0)


def test_consecutive_table_ops_fuse_exactly():
  """Tables compose and histogram ops read the pending table's histogram: still PIL-exact."""
  chain = [("solarize", 128), ("autocontrast", 0), ("posterize", 5), ("equalize", 0),
           ("invert", 0), ("brightness", 1.3), ("solarize_add", 30), ("autocontrast", 0)]
  for mode in ("RGB", "L"):
    image = _pixels(mode, 40, 200, size=(32, 24))
    expected = image
    for name, value in chain:
      expected = REFERENCES[name][0](expected, value)
    out = apply_photometric(image, [Op(n, v) for n, v in chain])
    np.testing.assert_array_equal(np.asarray(out), np.asarray(expected))
  mixed = [Op("color", 0.4), Op("color", 1.5), Op("invert"), Op("sharpness", 1.5)]
  expected = image = _pixels(size=(32, 24))
  for op in mixed:
    expected = REFERENCES[op.name][0](expected, op.value)
  assert _diff(apply_photometric(image, mixed), expected) <= 3


def _marker_image(points, size=(64, 48)):
  image = np.zeros((size[1], size[0]), np.uint8)
  for i, (x, y) in enumerate(points):
    image[y - 1:y + 2, x - 1:x + 2] = 60 * (i + 1)
  return Image.fromarray(image)


def _centroids(image, count):
  array = np.asarray(image)
  found = []
  for i in range(count):
    ys, xs = np.nonzero(array == 60 * (i + 1))
    found.append((xs.mean() + 0.5, ys.mean() + 0.5))  # Continuous coordinates.
  return np.array(found)


PIL_GEOMETRY = {  # Each op by its definition, as PIL resamples it (nearest).
    "rotate": lambda im, v: im.rotate(v, Image.Resampling.NEAREST),
    "shear_x": lambda im, v: im.transform(im.size, Image.Transform.AFFINE, (1, v, 0, 0, 1, 0)),
    "shear_y": lambda im, v: im.transform(im.size, Image.Transform.AFFINE, (1, 0, 0, v, 1, 0)),
    "translate_x": lambda im, v: im.transform(im.size, Image.Transform.AFFINE, (1, 0, -v, 0, 1, 0)),
    "translate_y": lambda im, v: im.transform(im.size, Image.Transform.AFFINE, (1, 0, 0, 0, 1, -v)),
}


def _folded(image, ops):
  """The train warp (identity crop, nearest) with the ops folded in."""
  geometry = T.Geometry(box=(0, 0, *image.size), post=warp_matrix(ops, image.size))
  return T.warp(image, geometry, image.size, "nearest", fill=0)


@pytest.mark.parametrize("ops", [
    [Op("rotate", 90)], [Op("rotate", -30)], [Op("shear_x", 0.3)], [Op("shear_y", -0.2)],
    [Op("translate_x", 7)], [Op("translate_y", -5)],
    [Op("rotate", 25), Op("shear_x", -0.25), Op("translate_y", 6), Op("shear_y", 0.15)],
])
def test_geometric_ops_fold_into_the_warp_as_pil_applies_them_in_turn(ops):
  points = [(20, 12), (40, 30), (31, 20)]
  image = _marker_image(points)
  expected = image
  for op in ops:
    expected = PIL_GEOMETRY[op.name](expected, op.value)
  got = _centroids(_folded(image, ops), len(points))
  np.testing.assert_allclose(got, _centroids(expected, len(points)), atol=0.75)
  if ops == [Op("rotate", 90)]:  # Known landing: 90 degrees counter-clockwise about (32, 24).
    np.testing.assert_allclose(got, [(y + 8, 56 - x) for x, y in np.array(points) + 0.5],
                               atol=0.5)
  if ops == [Op("translate_x", 7)]:
    np.testing.assert_allclose(got, np.array(points) + [7.5, 0.5], atol=0.01)


def test_train_transform_resamples_once_with_a_policy(monkeypatch):
  calls = []
  original = Image.Image.transform
  monkeypatch.setattr(Image.Image, "transform",
                      lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
  options = T.Options(image_size=16, auto_augment="randaugment", ra_num_ops=6,
                      ra_magnitude=10, rotate=10)
  record = _record()
  transform = T.TrainTransform(options)
  for seed in range(20):
    calls.clear()
    transform.random_map(dict(record), np.random.default_rng(seed))
    assert len(calls) == 1


def _record(size=(40, 30)):
  buffer = io.BytesIO()
  synthetic.synthetic_image(np.random.default_rng(0), 1, 4, size)[0].save(buffer, format="PNG")
  return {"image": buffer.getvalue(), "label": 1, "bbox": np.zeros(4, np.float32),
          "file_name": "x.png"}


# --- policies ---------------------------------------------------------------------------


def _samples(policy, n, size=(224, 160)):
  rng = np.random.default_rng(0)
  return [policy.sample(rng, size) for _ in range(n)]


def _assert_rate(count, n, p):
  assert abs(count - n * p) <= 5 * math.sqrt(n * p * (1 - p)) + 1, (count, n, p)


def test_randaugment_frequencies_and_timm_values():
  n = 3000
  draws = _samples(augment.Policy("randaugment", num_ops=2, magnitude=9, magnitude_std=0), n)
  counts = collections.Counter(op.name for ops in draws for op in ops)
  assert len(counts) == 15
  for name in counts:  # Each of 2 slots: this op with p 1/15, applied with p 0.5.
    _assert_rate(counts[name], 2 * n, 0.5 / 15)
  values = collections.defaultdict(set)
  for op in (op for ops in draws for op in ops):
    values[op.name].add(round(op.value, 9))
  assert values["rotate"] == {27.0, -27.0} and values["shear_x"] == {0.27, -0.27}
  assert values["translate_x"] == {0.405 * 224, -0.405 * 224}
  assert values["translate_y"] == {round(0.405 * 160, 9), round(-0.405 * 160, 9)}
  assert values["color"] == {1.81, 0.19} and values["posterize"] == {1}
  assert values["solarize"] == {26} and values["solarize_add"] == {99}
  assert values["equalize"] == {0.0}


@pytest.mark.parametrize("magnitude,std", [(9, 0.5), (10, 0.5), (6, math.inf)])
def test_randaugment_magnitude_noise(magnitude, std):
  draws = _samples(augment.Policy("randaugment", 2, magnitude, std), 4000)
  levels = np.array([abs(op.value) / 3 for ops in draws for op in ops if op.name == "rotate"])
  assert len(levels) > 100 and levels.max() <= 10 + 1e-9
  if std == math.inf:  # Uniform in [0, m].
    assert levels.max() <= magnitude + 1e-9 and abs(levels.mean() - magnitude / 2) < 0.4
  elif magnitude == 10:  # Clipped at 10: half the draws.
    assert abs(np.mean(levels == 10) - 0.5) < 0.1 and levels.min() > 8
  else:
    assert abs(levels.mean() - magnitude) < 0.1 and abs(levels.std() - std) < 0.1


def test_trivialaugment_draws_one_op_uniformly_over_wide_bins():
  n = 2800
  draws = _samples(augment.Policy("trivialaugment"), n)
  assert all(len(ops) == 1 for ops in draws)
  counts = collections.Counter(ops[0].name for ops in draws)
  assert len(counts) == 14 and "invert" not in counts and "solarize_add" not in counts
  for name in counts:
    _assert_rate(counts[name], n, 1 / 14)
  rotations = {ops[0].value for ops in draws if ops[0].name == "rotate"}
  assert max(rotations) == 135 and min(rotations) == -135
  assert all(abs(v / 4.5 - round(v / 4.5)) < 1e-9 for v in rotations)
  assert {ops[0].value for ops in draws if ops[0].name == "posterize"} == set(range(2, 9))
  assert max(abs(ops[0].value) for ops in draws if ops[0].name == "translate_x") == 32


def test_autoaugment_applies_each_imagenet_op_with_its_probability():
  n = 5000
  draws = _samples(augment.Policy("autoaugment"), n)
  counts = collections.Counter(op.name for ops in draws for op in ops)
  expected = collections.Counter()
  for sub_policy in augment.IMAGENET_POLICY:
    for name, prob, _ in sub_policy:
      expected[name] += prob / len(augment.IMAGENET_POLICY)
  assert set(counts) == set(expected)
  for name, rate in expected.items():
    _assert_rate(counts[name], n, rate)
  rotations = {round(abs(op.value), 6) for ops in draws for op in ops if op.name == "rotate"}
  assert rotations == {round(30 * k / 9, 6) for k in (3, 8, 9)}
  assert {op.value for ops in draws for op in ops if op.name == "posterize"} == {4, 5, 6}


# --- erasing ----------------------------------------------------------------------------


def test_erasing_boxes_respect_area_aspect_count_and_bounds():
  eraser = erasing.Erasing(prob=0.3, area=(0.05, 0.3), aspect=(0.5, 2.0), count=(1, 3))
  rng = np.random.default_rng(0)
  height, width = 60, 80
  draws = [eraser.boxes(rng, height, width) for _ in range(3000)]
  _assert_rate(sum(bool(b) for b in draws), 3000, 0.3)
  assert {len(b) for b in draws} == {0, 1, 2, 3}
  log_aspects = []
  for boxes in filter(None, draws):
    for top, left, h, w in boxes:
      assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
      share = h * w / (height * width) * len(boxes)  # Each box: area / count.
      slack = (h + w + 1) / (height * width) * len(boxes)  # h and w are rounded.
      assert 0.05 - slack <= share <= 0.3 + slack
      assert 0.5 * (1 - 1 / h) / (1 + 1 / w) <= h / w <= 2 * (1 + 1 / h) / (1 - 1 / w)
      log_aspects.append(math.log(h / w))
  assert abs(np.mean(log_aspects)) < 0.05  # Log-uniform over a symmetric range.


def test_erasing_fills():
  image = np.full((40, 50, 3), 7, np.uint8)
  mean, std = (0.5, 0.3, 0.7), (0.1, 0.05, 0.08)  # Little clipping: close to N(0, 1).
  for mode in erasing.MODES:
    eraser = erasing.Erasing(prob=1.0, area=(0.3, 0.3), mode=mode, mean=mean, std=std)
    out = eraser(np.random.default_rng(3), image)
    assert image.max() == 7  # The input is not modified.
    erased = out != 7
    ys, xs = np.nonzero(erased.any(-1))
    box = out[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.float64)
    assert erased.any(-1).sum() == box.shape[0] * box.shape[1]  # One rectangle.
    normalized = (box / 255 - mean) / std
    if mode == "pixel":
      np.testing.assert_allclose(normalized.reshape(-1, 3).mean(0), 0, atol=0.1)
      np.testing.assert_allclose(normalized.reshape(-1, 3).std(0), 1, atol=0.1)
    elif mode == "rand":
      assert (box == box[0, 0]).all() and np.abs(normalized[0, 0]).max() < 5
    else:
      np.testing.assert_array_equal(box[0, 0], np.round(255 * np.array(mean)))
      assert (box == box[0, 0]).all()


def test_noise_levels_are_the_quantized_clipped_normal():
  mean, std = 0.470, 0.267  # The study's: clipping beyond about -1.76 and +1.98.
  table = erasing.normal_levels((mean,), (std,))[0]
  probabilities = np.bincount(table, minlength=256) / len(table)
  phi = lambda v: 0.5 * (1 + math.erf(((v + 0.5) / 255 - mean) / std / math.sqrt(2)))
  expected = np.diff([0.0] + [phi(v) for v in range(255)] + [1.0])
  np.testing.assert_allclose(probabilities, expected, atol=2 ** -16)


# --- the pipeline: same batches for any worker count ------------------------------------


@pytest.mark.parametrize("policy", ["randaugment", "trivialaugment", "autoaugment"])
def test_policies_and_erasing_do_not_depend_on_the_worker_count(request, policy):
  prepared = request.getfixturevalue("config")  # test_data_pipeline's synthetic copy.
  batches = {}
  for workers in (0, 2):
    c = prepared.copy_and_resolve_references()
    c.image_size, c.auto_augment, c.ra_magnitude, c.erase_prob = 16, policy, 10, 0.7
    c.workers, c.read_threads = workers, 0  # The defaults' layout (read threads: none).
    it = pipeline.train_iterator(c, global_batch_size=4, seed=5, process_index=0,
                                 process_count=1)
    try:
      batches[workers] = [next(it)["image"] for _ in range(3)]
    finally:
      if hasattr(it, "close"):
        it.close()
  np.testing.assert_array_equal(np.stack(batches[0]), np.stack(batches[2]))
  flat = np.stack(batches[0]).reshape(12, -1)
  assert len({row.tobytes() for row in flat}) == 12


def test_colour_ops_after_the_jitter_join_its_matrix(monkeypatch):
  image = _pixels(low=60, high=181, size=(32, 24))  # Unclipped: the fused matrix never clips.
  jitter = np.hstack([np.diag([1.1, 0.9, 1.0]), np.full((3, 1), 5.0)])
  expected = T.apply_colour(image, jitter)
  for f in (0.5, 1.4):
    expected = ImageEnhance.Color(expected).enhance(f)
  converts = []
  original = Image.Image.convert
  monkeypatch.setattr(Image.Image, "convert",
                      lambda self, *a, **k: converts.append(1) or original(self, *a, **k))
  out = apply_photometric(image, [Op("color", 0.5), Op("rotate", 9), Op("color", 1.4)], jitter)
  assert len(converts) == 1  # One matrix pass for all three.
  assert _diff(out, expected) <= 3


def test_input_benchmark_times_each_policy_against_the_first():
  from efficientnet_jax.benchmarks import input as input_benchmark

  policies = ["none", "randaugment", "autoaugment+erasing"]
  result = input_benchmark.policy_rates([_record()], T.Options(image_size=16), policies, n=4,
                                        rounds=2)
  assert list(result) == policies and result["none"]["relative_cost"] == 1.0
  assert all(r["img_s"] > 0 and r["relative_cost"] > 0 for r in result.values())
  options = input_benchmark.policy_options(T.Options(), "trivialaugment+erasing")
  assert options.auto_augment == "trivialaugment"
  assert options.erase_prob == input_benchmark.ERASE_PROB
  with pytest.raises(SystemExit, match="--policies: unknown policy 'augmix'"):
    input_benchmark.policy_options(T.Options(), "augmix")
