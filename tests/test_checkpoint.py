"""checkpoint.py: latest/best managers, iterator position, interrupted saves, signals."""

import os
import signal

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from efficientnet_jax import checkpoint


def _cfg(**overrides) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict(
      {"every_steps": 10, "keep_latest": 2, "keep_best": 2, "async_save": True})
  cfg.update(overrides)
  return cfg


def _iterator():
  return iter(grain.MapDataset.range(1000).shuffle(seed=3).batch(4).to_iter_dataset())


def _state(step: int):
  return {"step": jnp.asarray(step, jnp.int32), "w": jnp.full((3, 2), float(step)),
          "key": jax.random.key(step)}


def test_latest_restores_state_meta_and_iterator_position(tmp_path):
  it = _iterator()
  for _ in range(5):
    next(it)
  with checkpoint.Checkpoints(str(tmp_path), _cfg()) as ckpts:
    ckpts.save_latest(5, _state(5), {"epoch": 1, "best": float("inf")}, it)
    expected = [next(it).tolist() for _ in range(3)]  # Advancing during the async write.
    for _ in range(10):
      next(it)

  fresh = _iterator()
  with checkpoint.Checkpoints(str(tmp_path), _cfg()) as ckpts:
    assert ckpts.latest_step() == 5
    state, meta = ckpts.restore_latest(_state(0), fresh)
  assert int(state["step"]) == 5 and float(state["w"][0, 0]) == 5.0
  assert jax.random.key_data(state["key"]).tolist() == jax.random.key_data(jax.random.key(5)).tolist()
  assert meta == {"epoch": 1, "best": float("inf")}
  assert [next(fresh).tolist() for _ in range(3)] == expected


def test_latest_keeps_n_and_an_interrupted_save_leaves_the_previous_intact(tmp_path):
  it = _iterator()
  with checkpoint.Checkpoints(str(tmp_path), _cfg()) as ckpts:
    for step in (1, 2, 3):
      ckpts.save_latest(step, _state(step), {}, it)
  latest_dir = tmp_path / "checkpoints" / "latest"
  assert sorted(p for p in os.listdir(latest_dir) if p.isdigit()) == ["2", "3"]
  # A save killed midway leaves only a temporary folder behind.
  (latest_dir / "4.orbax-checkpoint-tmp-1234").mkdir()
  with checkpoint.Checkpoints(str(tmp_path), _cfg()) as ckpts:
    assert ckpts.latest_step() == 3
    state, _ = ckpts.restore_latest(_state(0), _iterator())
  assert int(state["step"]) == 3


def test_best_keeps_the_top_k_by_validation_accuracy(tmp_path):
  with checkpoint.Checkpoints(str(tmp_path), _cfg()) as ckpts:
    for step, top1 in ((1, 0.5), (2, 0.7), (3, 0.6)):
      if ckpts.is_among_best(top1):
        ckpts.save_best(step, {"w": jnp.full((2,), top1)}, {"step": step}, top1)
    assert not ckpts.is_among_best(0.55)
    assert ckpts.is_among_best(0.65)
  with checkpoint.Checkpoints(str(tmp_path), _cfg()) as ckpts:  # Known after a restart too.
    assert not ckpts.is_among_best(0.55)
    model, meta = ckpts.restore_best({"w": jnp.zeros((2,))})
  assert meta == {"step": 2} and float(model["w"][0]) == np.float32(0.7)
  assert sorted(os.listdir(tmp_path / "checkpoints" / "best")) == ["2", "3"]
  assert os.listdir(tmp_path / "checkpoints" / "latest") == []  # Untouched by best saves.


def test_stop_signal_sets_a_flag_and_restores_handlers():
  before = signal.getsignal(signal.SIGTERM)
  with checkpoint.StopSignal() as stop:
    assert not stop.requested()
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.requested()
  assert signal.getsignal(signal.SIGTERM) is before
