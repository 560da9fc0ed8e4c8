"""train_and_evaluate end to end on the demo config (synthetic data, tiny shapes):
outputs, resumption, SIGTERM, configuration errors."""

import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from efficientnet_jax import (checkpoint, data, device_feed, metrics, parallel, run_model, steps,
                              train)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow  # Whole training runs; make test starts these first.
DEMO = os.path.join(ROOT, "configs", "demo.py")
# Small and fast: 32 px, XLA's depthwise convolution (compiles faster than 'shifted').
FAST = {"data.image_size": 32, "model.depthwise": "conv", "train.log_every_steps": 2,
        "eval.batch_size": 16}


def demo_config(**overrides):
  import configs.demo  # pylint: disable=g-import-not-at-top

  config = configs.demo.get_config()
  for key, value in {**FAST, **overrides}.items():
    *sections, field = key.split(".")
    node = config
    for section in sections:
      node = node[section]
    node[field] = value
  return config


def _flag_args(overrides) -> list[str]:
  return [f"--config.{k}={v}" for k, v in {**FAST, **overrides}.items()]


@pytest.fixture(scope="module")
def demo_run(demo_data, tmp_path_factory):
  """(workdir, results) of a finished 3-epoch demo run."""
  workdir = str(tmp_path_factory.mktemp("demo_run") / "run")
  return workdir, train.train_and_evaluate(demo_config(**{"train.num_epochs": 3}), workdir)


def test_demo_run_writes_checkpoints_events_and_results(demo_run):
  workdir, results = demo_run

  saved = json.load(open(os.path.join(workdir, "results.json")))
  assert saved == json.loads(json.dumps(results))
  test = saved["test"]
  assert test["num_examples"] == 40  # Every test example exactly once (4 classes x 10).
  assert 0.0 <= test["top1"] <= test["top5"] <= 1.0
  assert len(test["per_class_accuracy"]) == 4 and len(test["hardest_classes"]) == 4
  assert saved["epochs"] + saved["stopped_early"] >= 1 and saved["steps"] > 0
  assert saved["train_images_per_sec"] > 0 and saved["wall_time_sec"] > 0
  assert "test_ema" in saved  # The demo keeps an EMA.

  ckpt_dir = os.path.join(workdir, "checkpoints")
  latest = sorted(int(s) for s in os.listdir(os.path.join(ckpt_dir, "latest")) if s.isdigit())
  assert latest[-1] == saved["steps"] and len(latest) <= 2
  assert os.listdir(os.path.join(ckpt_dir, "best")) == [str(saved["best_checkpoint"]["step"])]
  assert os.path.isfile(os.path.join(workdir, "config.json"))
  assert open(os.path.join(workdir, "git_revision.txt")).read().strip()

  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top

  events = event_accumulator.EventAccumulator(workdir, size_guidance={"tensors": 0, "images": 0})
  events.Reload()
  tags = events.Tags()
  for tag in ("train/loss", "train/accuracy", "train/learning_rate", "perf/images_per_sec",
              "perf/step_time", "perf/data_wait_fraction", "perf/h2d_time", "train/epoch",
              "val/loss", "val/top1", "val/top5", "val_ema/top1", "test/top1", "test/top5"):
    assert tag in tags["tensors"], tag
  images = tags["tensors"]  # TF2 summaries store images as tensors too.
  assert "train/augmented_samples" in images and "test/confusion_matrix" in images
  top1 = [e.step for e in events.Tensors("test/top1")]
  assert top1 == [saved["steps"]]


def test_load_trained_reproduces_the_test_top1_of_results_json(demo_run):
  workdir, results = demo_run
  config = ml_collections.ConfigDict(json.load(open(os.path.join(workdir, "config.json"))))
  forward = nnx.jit(lambda model, x: model(x))
  for ema, key in ((False, "test"), (True, "test_ema")):
    trained = run_model.load_trained(workdir, ema=ema)
    assert trained.checkpoint == "best" and trained.step == results["best_checkpoint"]["step"]
    assert len(trained.class_names) == 4 and trained.convention.image_size == 32
    hits = count = 0
    for batch in data.eval_iterator(config.data, "test", global_batch_size=16):
      logits = np.asarray(forward(trained.model, trained.normalize(batch["image"])))
      hits += int(np.sum((logits.argmax(-1) == batch["label"]) & batch["mask"]))
      count += int(batch["mask"].sum())
    assert count == 40 and hits / count == results[key]["top1"], (ema, hits)
  latest = run_model.load_trained(workdir, "latest")
  assert latest.checkpoint == "latest" and latest.step == results["steps"]
  with pytest.raises(FileNotFoundError, match="no checkpoint at step 12345"):
    run_model.load_trained(workdir, 12345)
  with pytest.raises(FileNotFoundError, match="not a training workdir"):
    run_model.load_trained(os.path.dirname(workdir))


def _record_train_batches(monkeypatch) -> list[str]:
  """Fingerprints of every training batch a train step consumes (not those prefetched)."""
  seen = []
  original = steps.CompiledSteps.train

  def recording(self, state, batch):
    seen.append(f"{np.asarray(batch['label']).tolist()}:"
                f"{int(np.asarray(batch['image'], np.int64).sum())}")
    return original(self, state, batch)

  monkeypatch.setattr(steps.CompiledSteps, "train", recording)
  return seen


def _params(workdir, config=None):
  """(step, parameters, host state) of the latest checkpoint of `workdir` (a demo run)."""
  config = config or demo_config()
  with checkpoint.Checkpoints(workdir, config.checkpoint) as ckpts:
    trainer = train.Trainer(train.resolve_config(config), workdir, ckpts)
    return trainer.step, jax.device_get(trainer.state.variables.params), trainer.host


def test_resume_after_interruption_matches_an_uninterrupted_run(demo_data, tmp_path, monkeypatch):
  common = {"train.num_epochs": 2, "eval.test_at_end": False,
            "optim.early_stopping.enabled": False}
  seen = _record_train_batches(monkeypatch)
  train.train_and_evaluate(demo_config(**common), str(tmp_path / "straight"))
  straight = list(seen)

  seen.clear()
  resumed_dir = str(tmp_path / "resumed")
  assert train.train_and_evaluate(demo_config(**common, **{"train.stop_at_step": 4}),
                                  resumed_dir) is None
  assert len(seen) == 4
  legacy_dir = str(tmp_path / "legacy")
  shutil.copytree(resumed_dir, legacy_dir)
  _rewrite_in_the_layout_before_variables(legacy_dir, demo_config(**common))
  train.train_and_evaluate(demo_config(**common), resumed_dir)
  resumed = list(seen)

  assert resumed == straight and len(straight) == 12
  step_a, params_a, host_a = _params(str(tmp_path / "straight"))
  step_b, params_b, host_b = _params(resumed_dir)
  assert step_a == step_b == 12
  assert host_a.plateau == host_b.plateau
  for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

  # A checkpoint written before the weights were grouped into Variables resumes the same way.
  train.train_and_evaluate(demo_config(**common), legacy_dir)
  step_c, params_c, _ = _params(legacy_dir)
  assert step_c == 12
  for a, c in zip(jax.tree.leaves(params_b), jax.tree.leaves(params_c)):
    np.testing.assert_array_equal(a, c)


def _rewrite_in_the_layout_before_variables(workdir, config):
  """Rewrites the latest checkpoint of `workdir` with the weights as top-level state fields
  (params, batch_stats, ema), as versions before steps.Variables saved it."""
  config = train.resolve_config(config)
  with checkpoint.Checkpoints(workdir, config.checkpoint) as ckpts:
    trainer = train.Trainer(config, workdir, ckpts)
    step = trainer.step
    shutil.rmtree(os.path.join(workdir, "checkpoints", "latest", str(step)))
  with checkpoint.Checkpoints(workdir, config.checkpoint) as ckpts:
    ckpts.save_latest(step, trainer.state.legacy(), trainer.host.to_json(), trainer.train_iter)
  saved = checkpoint._saved_tree(  # pylint: disable=protected-access
      checkpoint.item_path(checkpoint.manager_dir(workdir, "latest"), step, "state"))
  assert checkpoint.VARIABLES not in saved and "params" in saved


def test_sigterm_saves_a_restorable_checkpoint_and_exits_cleanly(demo_data, tmp_path):
  workdir = str(tmp_path / "run")
  cmd = [sys.executable, "-m", "efficientnet_jax.main", f"--config={DEMO}", f"--workdir={workdir}",
         *_flag_args({"train.num_epochs": 100, "train.log_every_steps": 1})]
  proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                          text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  lines = []
  for line in proc.stderr:
    lines.append(line)
    if " step 2/" in line:  # Training is under way.
      proc.send_signal(signal.SIGTERM)
      break
  else:
    pytest.fail("training never started:\n" + "".join(lines[-30:]))
  _, rest = proc.communicate(timeout=300)
  log = "".join(lines) + rest
  assert proc.returncode == 0, log[-3000:]
  assert "Received SIGTERM" in log and "Stopping at step" in log
  step, params, _ = _params(workdir)
  assert 2 <= step < 600
  assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(params))


def test_unknown_config_field_is_rejected():
  from test_train_configs import load_config  # pylint: disable=g-import-not-at-top

  assert load_config(DEMO, "--config.train.num_epochs=1").train.num_epochs == 1
  with pytest.raises(Exception, match="no_such_field"):
    load_config(DEMO, "--config.train.no_such_field=1")


def test_class_count_mismatch_names_the_field(demo_data, tmp_path):
  with pytest.raises(ValueError, match=r"model.num_classes=7 .* 4 classes"):
    train.train_and_evaluate(demo_config(**{"model.num_classes": 7}), str(tmp_path))


def test_channel_mismatch_names_both_fields(demo_data, tmp_path):
  with pytest.raises(ValueError, match="model.in_channels=1 but config.data.channels=3"):
    train.train_and_evaluate(demo_config(**{"model.in_channels": 1}), str(tmp_path))


def test_missing_pretrained_weights_name_the_field(demo_data, tmp_path):
  with pytest.raises(FileNotFoundError, match="config field pretrained"):
    train.train_and_evaluate(demo_config(**{"pretrained": str(tmp_path / "nope.pth")}),
                             str(tmp_path))


def test_pretrained_weights_of_another_architecture_are_rejected(demo_data, tmp_path):
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from efficientnet_jax import weights  # pylint: disable=g-import-not-at-top
  from efficientnet_jax.models import create_model  # pylint: disable=g-import-not-at-top

  source = create_model("b0", num_classes=10, depthwise="conv")
  tensors = {"/".join(map(str, path)): np.asarray(v.value) for path, v in
             nnx.to_flat_state(nnx.state(source, (nnx.Param, nnx.BatchStat)))}
  convention = weights.InputConvention(mean=(0.5,) * 3, std=(0.5,) * 3)
  spec = str(tmp_path / "b0_weights")
  weights.save_weights(weights.PortedWeights(
      arch="b0", padding="same", bn_epsilon=1e-3, convention=convention,
      class_names=tuple(str(i) for i in range(10)), tensors=tensors, origin={}), spec)
  with pytest.raises(ValueError, match="model.arch='b0'"):
    train.train_and_evaluate(demo_config(**{"model.arch": "b1", "pretrained": spec}),
                             str(tmp_path / "run"))


def test_pretrained_weights_load_with_their_input_convention(tmp_path):
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from efficientnet_jax import weights  # pylint: disable=g-import-not-at-top
  from efficientnet_jax.models import create_model  # pylint: disable=g-import-not-at-top

  source = create_model("b0", num_classes=10, depthwise="conv", seed=1)
  tensors = {"/".join(map(str, path)): np.asarray(v.value) for path, v in
             nnx.to_flat_state(nnx.state(source, (nnx.Param, nnx.BatchStat)))}
  convention = weights.InputConvention(mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2),
                                       interpolation="bicubic", crop_pct=0.875)
  spec = str(tmp_path / "w")
  weights.save_weights(weights.PortedWeights(
      arch="b0", padding="same", bn_epsilon=1e-3, convention=convention,
      class_names=tuple(str(i) for i in range(10)), tensors=tensors, origin={}), spec)
  from efficientnet_jax import run_model  # pylint: disable=g-import-not-at-top
  from efficientnet_jax.config import get_config  # pylint: disable=g-import-not-at-top

  config = get_config()
  config.model.update(num_classes=4, depthwise="conv")
  config.pretrained = spec
  before = config.to_json()
  model, convention = run_model.build(config)
  assert config.to_json() == before  # The convention is returned, not written into the config.
  np.testing.assert_array_equal(model.stem.conv.kernel.value, source.stem.conv.kernel.value)
  assert model.classifier.kernel.value.shape == (1280, 4)  # A fresh head for 4 classes.
  assert convention.mean == (0.5, 0.4, 0.3) and convention.crop_pct == 0.875
  assert convention.interpolation == "bicubic" and convention.image_size == config.data.image_size
  resolved = run_model.with_input(config, convention)
  assert resolved.data.mean == (0.5, 0.4, 0.3) and resolved.data.interpolation == "bicubic"
  config.train.input_convention = "config"  # The config's own normalization instead.
  assert run_model.build(config)[1].mean == tuple(config.data.mean)


def test_the_modern_preset_runs_end_to_end_with_flip_tta(demo_data, tmp_path):
  import configs.cars_modern  # pylint: disable=g-import-not-at-top

  demo = demo_config()
  config = configs.cars_modern.get_config("b0")
  config.pretrained = ""  # No downloads here; the recipe is the same from scratch.
  for field in ("dir", "tfds_dir", "val_fraction", "image_size", "workers", "read_threads"):
    config.data[field] = demo.data[field]
  config.model.num_classes, config.model.depthwise = demo.model.num_classes, "conv"
  config.train.update(num_epochs=2, batch_size=16, log_every_steps=3)
  config.optim.warmup_epochs = 1.0
  config.eval.update(batch_size=16, tta="flip")
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert results["tta"] == "flip" and results["test"]["num_examples"] == 40
  assert results["steps"] == 2 * (128 - 25) // 16 and np.isfinite(results["test"]["loss"])
  assert set(results) >= {"test", "test_ema"}  # EMA on, as the preset says.


def test_a_second_run_loads_the_train_step_from_the_compilation_cache(demo_data, tmp_path, caplog):
  overrides = {"train.num_epochs": 1, "compile_cache": str(tmp_path / "xla")}
  runs = []
  for name in ("first", "second"):
    caplog.clear()
    # On absl's logger itself: a test that unparsed absl's flags earlier in this process
    # left that logger at WARNING (--verbosity's default).
    with caplog.at_level(logging.INFO, logger="absl"):
      results = train.train_and_evaluate(demo_config(**overrides), str(tmp_path / name))
    line = next(r.getMessage() for r in caplog.records if "train step" in r.getMessage()
                and " in " in r.getMessage())
    runs.append((results, line, float(line.split(" in ")[1].split(" s")[0])))
  (first, first_line, first_s), (second, second_line, second_s) = runs
  assert first_line.startswith("compiled train step in ") and "cache" not in first_line
  assert second_line.startswith("train step from the compilation cache in ")
  assert second_s < first_s  # Tracing and one run remain; the compilation is skipped.
  assert second["test"] == first["test"]
  split = second["time_split_sec"]
  assert split["compile"] > 0 and split["validation"] > 0 and split["test"] > 0
  assert abs(sum(split.values()) - second["wall_time_sec"]) < 0.05 * second["wall_time_sec"]


def _no_work_step(batch_size: int):
  """A train step that computes nothing: what is left is the loop's own time."""
  done = metrics.TrainMetrics.single_from_model_output(
      loss=jnp.zeros(batch_size), logits=jnp.zeros((batch_size, 4)),
      labels=jnp.zeros(batch_size, jnp.int32), learning_rate=jnp.float32(1e-3),
      finite=jnp.bool_(True), step=jnp.int32(1))
  return lambda state, batch, teacher: (state.replace(step=state.step + 1), done)


def test_data_wait_fraction_is_near_1_with_a_slow_input_and_near_0_from_memory(
    demo_data, tmp_path, monkeypatch):
  config = train.resolve_config(demo_config(**{
      "train.log_every_steps": 1, "train.stop_at_step": 4, "train.num_sample_images": 0}))
  with checkpoint.Checkpoints(str(tmp_path), config.checkpoint) as ckpts:
    trainer = train.Trainer(config, str(tmp_path), ckpts)
    batch = next(trainer.train_iter)
    train.close(trainer.train_iter)

    class Batches:  # The first 3 batches take 0.4 s each, the others come from memory.
      fetched = 0

      def __next__(self):
        self.fetched += 1
        if self.fetched <= 3:
          time.sleep(0.4)
        return batch

      def get_state(self):
        return {"fetched": self.fetched}

    logged = []
    monkeypatch.setattr(trainer, "train_iter", Batches())
    no_work = dataclasses.replace(trainer.compiled,
                                  train_step=_no_work_step(config.train.batch_size))
    monkeypatch.setattr(trainer, "compiled", no_work)
    monkeypatch.setattr(trainer.stage_steps, "at", lambda step: no_work)  # The loop's step.
    monkeypatch.setattr(trainer, "save_latest", lambda: None)
    monkeypatch.setattr(trainer.writer, "write_scalars", lambda step, s: logged.append(s))
    assert trainer.train() is False
  # One line per step; step 1 (also the first use of the metrics' ops) is left out. Step 2
  # waits for batch 3 (batch 2 came with step 1: prefetch), steps 3-4 for batches 4-5.
  _, slow, *in_memory = logged
  assert slow["perf/data_wait_fraction"] > 0.8, slow
  assert len(in_memory) == 2 and all(s["perf/data_wait_fraction"] < 0.2 for s in in_memory), in_memory
  assert all(s["perf/h2d_time"] > 0 for s in logged)


def test_device_prefetch_saves_the_position_of_the_batches_handed_out(demo_data):
  config = train.resolve_config(demo_config())
  make = lambda: data.train_iterator(config.data, global_batch_size=16, seed=config.seed)
  labels = lambda batch: np.asarray(batch["label"]).tolist()
  reference = make()
  expected = [labels(next(reference)) for _ in range(5)]
  iterator = make()
  feed = device_feed.DevicePrefetch(iterator, parallel.create_mesh())
  handed_out = [labels(next(feed)[1]) for _ in range(3)]
  assert handed_out == expected[:3]
  assert labels(next(iterator)) == expected[4]  # Batch 4 is in flight, on the device.
  resumed = make()
  resumed.set_state(json.loads(feed.get_state()))
  assert labels(next(resumed)) == expected[3]
  for it in (reference, iterator, resumed):
    train.close(it)
