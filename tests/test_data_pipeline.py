"""Grain pipelines on a prepared synthetic copy: sharding, epochs, exact-once eval, resume."""

import collections

import numpy as np
import pytest

from efficientnet_jax.config import get_config
from efficientnet_jax.data import pipeline, preparation, records, synthetic

NO_AUGMENTATION = {"hflip": 0.0, "rotate": 0.0, "translate": 0.0, "scale": (1.0, 1.0),
                   "shear": 0.0, "brightness": 0.0, "contrast": 0.0, "saturation": 0.0,
                   "hue": 0.0}


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  root = tmp_path_factory.mktemp("cars")
  synthetic.make_synthetic_cars(str(root / "raw"), layout="official", num_classes=3,
                                per_class_train=10, per_class_test=5, size=(24, 20))
  c = get_config().data
  c.dir, c.tfds_dir = str(root / "raw"), str(root / "tfds")
  c.image_size, c.workers, c.read_threads = 8, 0, 2
  pipeline.num_examples(c, "train")  # Prepares once for the module.
  return c


def _identities(batch, mask=None):
  """Un-augmented images identify examples (synthetic images are all distinct)."""
  keep = np.ones(len(batch["label"]), bool) if mask is None else mask
  return [(img.tobytes(), int(l)) for img, l, k in zip(batch["image"], batch["label"], keep) if k]


def _eval_all(config, split, processes, batch):
  seen, steps = collections.Counter(), set()
  for p in range(processes):
    it = pipeline.eval_iterator(config, split, global_batch_size=batch, process_index=p,
                                process_count=processes)
    batches = list(it)
    steps.add(len(batches))
    for b in batches:
      assert b["image"].shape == (batch // processes, 8, 8, 3) and b["mask"].dtype == bool
      assert not b["image"][~b["mask"]].any()
      seen.update(_identities(b, b["mask"]))
  return seen, steps


def test_sizes_and_class_names(config):
  assert [pipeline.num_examples(config, s) for s in ("train", "val", "test")] == [27, 3, 15]
  assert pipeline.steps_per_epoch(config, 4) == 6
  assert records.class_names(preparation.ensure_prepared(config))[0] == "AM General Hummer SUV 2000"
  assert pipeline.eval_steps(config, "test", 4, process_count=2) == 4


@pytest.mark.parametrize("split,processes", [("test", 1), ("test", 2), ("val", 3)])
def test_eval_covers_every_example_exactly_once(config, split, processes):
  reference, _ = _eval_all(config, split, 1, 64)  # One batch holds the whole split.
  seen, steps = _eval_all(config, split, processes, 2 * processes)
  assert sum(reference.values()) == pipeline.num_examples(config, split)
  assert seen == reference and max(reference.values()) == 1
  assert steps == {pipeline.eval_steps(config, split, 2 * processes, processes)}


def test_train_epochs_are_disjoint_across_processes_and_reshuffled(config):
  plain = config.copy_and_resolve_references()
  plain.update(NO_AUGMENTATION)
  steps = pipeline.steps_per_epoch(plain, 8)
  epochs = collections.defaultdict(list)
  for p in range(2):
    it = pipeline.train_iterator(plain, global_batch_size=8, seed=0, process_index=p,
                                 process_count=2)
    for step in range(2 * steps):
      batch = next(it)
      assert batch["image"].shape == (4, 8, 8, 3) and batch["label"].dtype == np.int32
      epochs[step // steps].append(_identities(batch))
  val, _ = _eval_all(plain, "val", 1, 8)
  for e in (0, 1):
    flat = [x for batch in epochs[e] for x in batch]
    assert len(flat) == len(set(flat)) == 24  # 27 train examples, 3 dropped per epoch.
    assert not set(flat) & set(val)
  assert epochs[0] != epochs[1]


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])


def test_resume_mid_run_gives_the_same_batches(config):
  make = lambda: pipeline.train_iterator(config, global_batch_size=4, seed=7,
                                         process_index=0, process_count=1)
  it = make()
  _take(it, 5)
  state = it.get_state()
  expected = _take(it, 4)  # Crosses the epoch boundary (6 steps per epoch).
  resumed = make()
  resumed.set_state(state)
  _assert_same(_take(resumed, 4), expected)


def test_two_worker_processes_match_in_process_batches_and_resume(config):
  """Grain's state records the worker layout: resume with the same `workers`."""
  c = config.copy_and_resolve_references()
  c.workers = 2
  make = lambda cfg: pipeline.train_iterator(cfg, global_batch_size=4, seed=3,
                                             process_index=0, process_count=1)
  reference = make(config)
  expected = _take(reference, 6)
  reference.close()
  it = make(c)
  try:
    _assert_same(_take(it, 3), expected[:3])
    state = it.get_state()
  finally:
    it.close()
  resumed = make(c)
  try:
    resumed.set_state(state)
    _assert_same(_take(resumed, 3), expected[3:])
  finally:
    resumed.close()


def test_normalization_follows_channels(config):
  mean, std = pipeline.normalization(config)
  assert mean == (0.470, 0.460, 0.455) and std == (0.267, 0.266, 0.270)
  gray = config.copy_and_resolve_references()
  gray.channels = 1
  assert pipeline.normalization(gray) == ((0.462,), (0.270,))
  gray.gray_mean = (0.4, 0.4, 0.4)
  with pytest.raises(pipeline.DataError, match="need 1 value"):
    pipeline.normalization(gray)


def test_read_threads_prepare_at_most_the_buffer_of_whole_batches_ahead(config, monkeypatch):
  """prefetch_buffer_size counts batches: a 64 there once meant 64 batches per process."""
  import threading
  import time

  from efficientnet_jax.data import transforms

  calls, lock = [0], threading.Lock()
  original = transforms.TrainTransform.random_map

  def counted(self, element, rng):
    with lock:
      calls[0] += 1
    return original(self, element, rng)

  monkeypatch.setattr(transforms.TrainTransform, "random_map", counted)
  c = config.copy_and_resolve_references()
  c.read_threads, c.prefetch_buffer_size = 2, 2
  it = pipeline.train_iterator(c, global_batch_size=2, seed=0, process_index=0, process_count=1)
  try:
    next(it)
    time.sleep(1.0)  # Time to run ahead, were the buffer larger.
  finally:
    it.close()
  assert 2 * 2 <= calls[0] <= 2 * (1 + 2)  # The batch taken + the buffer (in progress too).
  for field in ("read_threads", "prefetch_buffer_size"):
    bad = c.copy_and_resolve_references()
    bad[field] = -1
    with pytest.raises(pipeline.DataError, match=rf"config.data.{field}=-1 must be >= 0"):
      pipeline.train_iterator(bad, global_batch_size=2, seed=0, process_index=0, process_count=1)
