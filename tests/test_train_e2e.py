"""train_and_evaluate end to end on the demo config (synthetic data, tiny shapes):
outputs, resumption, SIGTERM, configuration errors."""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from efficientnet_jax import checkpoint, parallel, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "configs", "demo.py")
# Small and fast: 32 px, XLA's depthwise convolution (compiles faster than 'shifted').
FAST = {"data.image_size": 32, "model.depthwise": "conv", "train.log_every_steps": 2,
        "eval.batch_size": 16}


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
  """The demo's synthetic copy, generated (and prepared) once for this module."""
  root = str(tmp_path_factory.mktemp("demo_data"))
  os.environ["EFFICIENTNET_JAX_DEMO_DATA"] = root
  yield root
  del os.environ["EFFICIENTNET_JAX_DEMO_DATA"]


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


def test_demo_run_writes_checkpoints_events_and_results(demo_data, tmp_path):
  workdir = str(tmp_path / "run")
  results = train.train_and_evaluate(demo_config(**{"train.num_epochs": 3}), workdir)

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
              "perf/step_time", "train/epoch", "val/loss", "val/top1", "val/top5",
              "val_ema/top1", "test/top1", "test/top5"):
    assert tag in tags["tensors"], tag
  images = tags["tensors"]  # TF2 summaries store images as tensors too.
  assert "train/augmented_samples" in images and "test/confusion_matrix" in images
  top1 = [e.step for e in events.Tensors("test/top1")]
  assert top1 == [saved["steps"]]


def _record_train_batches(monkeypatch) -> list[str]:
  """Fingerprints of every training batch that reaches the device."""
  seen = []
  original = parallel.global_batch

  def recording(local, mesh):
    if "mask" not in local:  # Evaluation batches carry a mask.
      seen.append(f"{local['label'].tolist()}:{int(np.asarray(local['image'], np.int64).sum())}")
    return original(local, mesh)

  monkeypatch.setattr(parallel, "global_batch", recording)
  return seen


def _params(workdir):
  config = demo_config()
  with checkpoint.Checkpoints(workdir, config.checkpoint) as ckpts:
    trainer = train.Trainer(train.resolve_config(config), workdir, ckpts)
    return trainer.step, jax.device_get(trainer.state.params), trainer.host


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
  train.train_and_evaluate(demo_config(**common), resumed_dir)
  resumed = list(seen)

  assert resumed == straight and len(straight) == 12
  step_a, params_a, host_a = _params(str(tmp_path / "straight"))
  step_b, params_b, host_b = _params(resumed_dir)
  assert step_a == step_b == 12
  assert host_a.plateau == host_b.plateau
  for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


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
  with pytest.raises(ValueError, match="model.in_channels=1 but data.channels=3"):
    train.train_and_evaluate(demo_config(**{"model.in_channels": 1}), str(tmp_path))


def test_missing_pretrained_weights_name_the_field(demo_data, tmp_path):
  with pytest.raises(FileNotFoundError, match="model.pretrained"):
    train.train_and_evaluate(demo_config(**{"model.pretrained": str(tmp_path / "nope.pth")}),
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
  with pytest.raises(ValueError, match="model.name='b0'"):
    train.train_and_evaluate(demo_config(**{"model.name": "b1", "model.pretrained": spec}),
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
  import configs.default  # pylint: disable=g-import-not-at-top

  config = configs.default.get_config()
  config.model.update(num_classes=4, pretrained=spec, depthwise="conv")
  model = train.create_model_from_config(config)
  np.testing.assert_array_equal(model.stem.conv.kernel.value, source.stem.conv.kernel.value)
  assert model.classifier.kernel.value.shape == (1280, 4)  # A fresh head for 4 classes.
  assert config.data.mean == (0.5, 0.4, 0.3) and config.data.crop_pct == 0.875
  assert config.data.interpolation == "bicubic"
