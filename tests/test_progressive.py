"""Progressive learning (config.progressive): the stage plan, its config checks, and a demo
run in two stages: sizes followed, one train-step compile per stage, evaluation at the
target size, exact resumption inside the second stage."""

import json

import jax
import numpy as np
import pytest
from test_train_e2e import _params, demo_config

from efficientnet_jax import config_checks, data, parallel, progressive, steps, train
from efficientnet_jax.config import get_config
from efficientnet_jax.errors import ConfigError

pytestmark = pytest.mark.slow  # Whole training runs; make test starts these first.


def _config(**progressive_fields):
  config = get_config()
  config.data.image_size = 224
  config.train.num_epochs = 10
  config.progressive.update(progressive_fields)
  return config


def test_stages_split_the_epochs_and_ramp_size_and_regularization():
  config = _config(stages=3, min_image_size=128, dropout_rate=(0.1, 0.3), ra_magnitude=(4, 10),
                   mixup_alpha=(0.0, 0.8))
  config.data.auto_augment = "randaugment"
  stages = progressive.plan(config, steps_per_epoch=7)
  assert [(s.first_step, s.end_step) for s in stages] == [(0, 21), (21, 42), (42, 70)]
  data = [s.config.data for s in stages]
  assert [d.image_size for d in data] == [128, 176, 224]
  assert [d.ra_magnitude for d in data] == [4.0, 7.0, 10.0]
  assert {d.storage_size for d in data} == {258}  # The run's stored copy (1.15 x 224), shared.
  np.testing.assert_allclose([s.config.model.dropout_rate for s in stages], [0.1, 0.2, 0.3])
  assert [s.config.mixup.alpha for s in stages] == [0.0, 0.4, 0.8]
  assert {s.config.mixup.cutmix_alpha for s in stages} == {0.0}  # Not ramped: the config's.
  assert config.data.image_size == 224 and config.model.dropout_rate == -1.0  # Untouched.
  assert [progressive.stage_at(stages, step).index for step in (20, 21, 69, 70)] == [0, 1, 2, 2]

  # The sizes in between are rounded to size_multiple; off: one stage, the config itself.
  config = _config(stages=4, min_image_size=128, size_multiple=16)
  config.data.image_size = 300
  assert [s.config.data.image_size for s in progressive.plan(config, 1)] == [128, 192, 240, 300]
  off = _config(stages=1)
  assert [(s.first_step, s.end_step, s.config) for s in progressive.plan(off, 7)] == [(0, 70, off)]


def test_bad_progressive_fields_are_one_line_errors_naming_them():
  config = _config(stages=12, min_image_size=256, dropout_rate=(0.1,), mixup_alpha=(-1.0, 0.5))
  found = config_checks.problems(config)
  assert any(p.startswith("config.progressive.dropout_rate=(0.1,) must be") for p in found)
  assert any(p.startswith("config.progressive.mixup_alpha=(-1.0, 0.5) must be") for p in found)
  assert any("config.progressive.stages=12 exceeds train.num_epochs=10" in p for p in found)
  assert all("\n" not in p for p in found)
  config = _config(stages=2, min_image_size=256)
  assert config_checks.problems(config) == [
      "config.progressive.min_image_size=256 exceeds data.image_size=224 (the last stage's "
      "size); lower it, or set --config.progressive.stages=0 (off)."]
  config = _config(stages=2, ra_magnitude=(5, 9))
  assert "data.auto_augment='none'" in config_checks.problems(config)[0]
  # A checkpoint of a run without stages (a plain Grain position) cannot resume in stages.
  iterator = progressive.StagedIterator(progressive.plan(_config(stages=2), 7),
                                        global_batch_size=16, seed=0)
  with pytest.raises(ConfigError, match="written without progressive learning"):
    iterator.set_state({"next_index": 3})


def _fingerprint(batch) -> tuple[int, str]:
  """(side, labels and pixel sum) of a training batch."""
  pixels = int(np.asarray(batch["image"], np.int64).sum())
  return batch["image"].shape[1], f"{batch['label'].tolist()}:{pixels}"


def test_the_staged_iterator_resumes_at_every_step(demo_data):  # noqa: F811
  config = demo_config(**{"train.num_epochs": 3, "progressive.stages": 3,
                          "progressive.min_image_size": 16, "data.image_size": 32})
  spe = data.steps_per_epoch(config.data, 16)
  stages = progressive.plan(config, spe)
  iterator = progressive.train_iterator(stages, global_batch_size=16, seed=0)
  states, batches = [], []
  for _ in range(3 * spe):
    states.append(iterator.get_state())
    batches.append(_fingerprint(next(iterator)))
  iterator.close()
  assert [side for side, _ in batches] == [16] * spe + [24] * spe + [32] * spe
  # The stages continue the run's order of examples (one without stages: the same labels).
  plain = data.train_iterator(config.data, global_batch_size=16, seed=0)
  assert [b.split(":")[0] for _, b in batches] == [
      str(next(plain)["label"].tolist()) for _ in range(3 * spe)]
  plain.close()
  for step in (spe - 1, spe, spe + 1, 2 * spe):  # Inside a stage and at its boundaries.
    resumed = progressive.train_iterator(stages, global_batch_size=16, seed=0)
    resumed.set_state(json.loads(json.dumps(states[step])))  # As the checkpoint stores it.
    assert [_fingerprint(next(resumed)) for _ in range(3 * spe - step)] == batches[step:]
    resumed.close()


def _record(monkeypatch):
  """({'train': (side, fingerprint) of each training batch, 'eval': side of each evaluation
  batch}, in order; the train steps built)."""
  seen, built = {"train": [], "eval": []}, []
  global_batch, build, train_step = parallel.global_batch, steps.build, steps.CompiledSteps.train

  def recording_batch(local, mesh):
    if "mask" in local:
      seen["eval"].append(local["image"].shape[1])
    return global_batch(local, mesh)

  def recording_train(self, state, batch):  # The batches steps consume, not those prefetched.
    seen["train"].append(_fingerprint({k: np.asarray(v) for k, v in batch.items()}))
    return train_step(self, state, batch)

  def recording_build(*args, **kwargs):
    compiled, state = build(*args, **kwargs)
    built.append(compiled.train_step)
    return compiled, state

  monkeypatch.setattr(parallel, "global_batch", recording_batch)
  monkeypatch.setattr(steps.CompiledSteps, "train", recording_train)
  monkeypatch.setattr(steps, "build", recording_build)
  return seen, built


def _compiles(built) -> int:
  return sum(step._cache_size() for step in built)  # pylint: disable=protected-access


def test_a_run_in_two_stages_resumes_inside_the_second_exactly(demo_data, tmp_path,  # noqa: F811
                                                               monkeypatch):
  common = {"train.num_epochs": 2, "eval.test_at_end": False, "optim.early_stopping.enabled": False,
            "progressive.stages": 2, "progressive.min_image_size": 24,
            "progressive.dropout_rate": (0.0, 0.2), "progressive.mixup_alpha": (0.0, 0.4),
            "progressive.ra_magnitude": (2.0, 8.0), "data.auto_augment": "randaugment"}
  seen, built = _record(monkeypatch)
  train.train_and_evaluate(demo_config(**common), str(tmp_path / "straight"))
  # 6 steps per epoch: epoch 1 at 24 px, epoch 2 at 32; validation at 32 after each.
  straight = list(seen["train"])
  assert [side for side, _ in straight] == [24] * 6 + [32] * 6
  assert set(seen["eval"]) == {32}
  assert _compiles(built) == 2  # One train-step compile per stage.

  resumed_dir = str(tmp_path / "resumed")
  for stop_at in (8, -1):  # Stopped inside the second stage, then resumed.
    seen["train"].clear()
    built.clear()
    train.train_and_evaluate(demo_config(**common, **{"train.stop_at_step": stop_at}), resumed_dir)
    assert _compiles(built) == (2 if stop_at > 0 else 1)
  assert seen["train"] == straight[8:]  # The same batches.

  config = demo_config(**common)
  step_a, params_a, _ = _params(str(tmp_path / "straight"), config)
  step_b, params_b, _ = _params(resumed_dir, config)
  assert step_a == step_b == 12
  for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
