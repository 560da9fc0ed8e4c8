"""What holds when things go wrong: merged classes, divergence, concurrent runs, failed and
corrupt checkpoints, bad config values, one-line errors, data edge cases, signals after the
last step, shared memory and console noise. Each test failed on the code before them."""

import io
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from PIL import Image

from flax import nnx

from efficientnet_jax import checkpoint, config_checks, data, parallel, run_model, train
from efficientnet_jax.config import get_config
from efficientnet_jax.data import layouts, transforms, verify
from efficientnet_jax.errors import ConfigError

from test_train_e2e import FAST, demo_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow  # Whole training runs; make test starts these first.
DEMO = os.path.join(ROOT, "configs", "demo.py")


def _env(**extra):
  return {**os.environ, "JAX_PLATFORMS": "cpu", **extra}


def _main(workdir, *overrides):
  """`python -m efficientnet_jax.main` on the demo config with FAST overrides."""
  args = [f"--config.{k}={v}" for k, v in FAST.items()] + list(overrides)
  return [sys.executable, "-m", "efficientnet_jax.main", f"--config={DEMO}",
          f"--workdir={workdir}", *args]


# --- 1. class folders never share a label ------------------------------------------------


def _class_folders(root, train, test):
  for split, folders in (("train", train), ("test", test)):
    for folder in folders:
      os.makedirs(os.path.join(root, split, folder))
      with open(os.path.join(root, split, folder, "a.jpg"), "wb") as f:
        f.write(b"not decoded when listing")


def test_distinct_class_folders_never_share_a_label(tmp_path):
  names = ["日本 車", "中国 车", "BMW M3", "BMW-M3", "bmw m3"]
  _class_folders(tmp_path, names, names)
  raw = layouts.read(layouts.detect(str(tmp_path)))
  assert len(raw.class_names) == 5
  for split in ("train", "test"):
    labels = {e.name.split("/")[1]: e.label for e in raw.splits[split]}
    assert sorted(labels.values()) == list(range(5)), labels
    assert all(raw.class_names[label] == folder for folder, label in labels.items())


def test_loosely_matching_test_folder_must_be_unambiguous(tmp_path):
  _class_folders(tmp_path / "a", ["BMW M3", "BMW-M3"], ["bmw m3"])
  with pytest.raises(data.DataError, match=r"bmw m3: it matches \['BMW M3', 'BMW-M3'\] loosely"):
    layouts.read(layouts.detect(str(tmp_path / "a")))
  _class_folders(tmp_path / "b", ["BMW M3"], ["BMW M3", "bmw m3"])  # Two folders, one class.
  with pytest.raises(data.DataError, match=r"would share the class 'BMW M3'"):
    layouts.read(layouts.detect(str(tmp_path / "b")))
  _class_folders(tmp_path / "c", ["Ram C-V Van"], ["ram c_v van"])  # Loose, unambiguous: matches.
  raw = layouts.read(layouts.detect(str(tmp_path / "c")))
  assert [e.label for e in raw.splits["test"]] == [0]


# --- 10. empty, dangling and looping folders; 16-bit images --------------------------------


def test_empty_and_unreadable_class_folders_are_refused_by_name(tmp_path):
  _class_folders(tmp_path / "a", ["A", "B"], ["A", "B"])
  os.remove(tmp_path / "a" / "train" / "B" / "a.jpg")
  with pytest.raises(data.DataError, match=r"train/B: no images"):
    layouts.read(layouts.detect(str(tmp_path / "a")))

  _class_folders(tmp_path / "b", ["A", "B"], ["A", "B"])
  os.remove(tmp_path / "b" / "train" / "B" / "a.jpg")
  os.symlink("missing.jpg", tmp_path / "b" / "train" / "B" / "gone.jpg")  # Dangling.
  raw = layouts.read(layouts.detect(str(tmp_path / "b")))
  gone = [e for e in raw.splits["train"] if e.name.endswith("gone.jpg")]
  assert gone and isinstance(verify.check_image(gone[0]), verify.BadImage)  # Named, not dropped.

  _class_folders(tmp_path / "c", ["A"], ["A"])
  os.symlink("loop", tmp_path / "c" / "train" / "loop")
  with pytest.raises(data.DataError, match=r"train/loop \(Too many levels of symbolic links\)"):
    layouts.read(layouts.detect(str(tmp_path / "c")))


def test_sixteen_bit_images_are_scaled_not_clipped():
  gradient = (np.arange(4 * 256).reshape(4, 256) * 64).astype(np.uint16)  # 0 .. 65472.
  buffer = io.BytesIO()
  Image.fromarray(gradient).save(buffer, format="PNG")
  image = Image.open(io.BytesIO(buffer.getvalue()))
  assert image.mode == "I;16"
  rgb = np.asarray(transforms.convert_mode(image, "RGB"))
  np.testing.assert_allclose(rgb[..., 0], gradient / 257.0, atol=0.51)
  assert (rgb == 255).mean() < 0.01  # PIL's own conversion leaves 99.6% white.


# --- 8. config values checked up front ----------------------------------------------------


def test_every_bad_config_value_is_named_before_any_work(tmp_path):
  config = get_config()
  config.data.dir = str(tmp_path / "does_not_exist")  # Would fail later, in preparation.
  config.data.tfds_dir = str(tmp_path / "tfds")
  bad = {"optim.lr": -1.0, "data.image_size": 0, "train.log_every_steps": 0,
         "checkpoint.every_steps": 0, "checkpoint.keep_latest": 0, "checkpoint.keep_best": 0}
  for key, value in bad.items():
    section, field = key.split(".")
    config[section][field] = value
  with pytest.raises(ConfigError) as error:
    train.train_and_evaluate(config, str(tmp_path / "run"))
  lines = sorted(line.strip() for line in str(error.value).splitlines()[1:])
  assert len(lines) == len(bad)
  for key, line in zip(sorted(bad), lines):
    assert line.startswith(f"config.{key}={bad[key]}"), line
  assert not os.path.exists(tmp_path / "tfds")
  assert config_checks.problems(get_config()) == []


# --- 3. one run per workdir ---------------------------------------------------------------

HOLD = """
import sys, time
from efficientnet_jax import checkpoint
with checkpoint.WorkdirLock(sys.argv[1]):
  print("locked", flush=True)
  time.sleep(600)
"""


def test_a_second_run_on_a_workdir_refuses_and_a_killed_one_does_not_block(tmp_path):
  holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True, env=_env())
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(checkpoint.WorkdirInUseError, match=rf'"pid": {holder.pid}'):
      with checkpoint.WorkdirLock(str(tmp_path)):
        pass
  finally:
    holder.kill()  # As kill -9: no cleanup runs; the lock file stays behind.
    holder.wait()
  assert os.path.exists(tmp_path / checkpoint.WorkdirLock.FILE)
  with checkpoint.WorkdirLock(str(tmp_path)):
    pass


# --- runs on the demo data ------------------------------------------------------------------


def _latest_params(workdir, config):
  with checkpoint.Checkpoints(workdir, config.checkpoint) as ckpts:
    trainer = train.Trainer(train.resolve_config(config), workdir, ckpts)
    trainer.close()
    return trainer.step, jax.device_get(trainer.state.variables.params)


def test_a_diverging_run_stops_naming_the_step_and_keeps_finite_checkpoints(demo_data, tmp_path):
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(demo_config(**{"train.num_epochs": 1, "eval.test_at_end": False}),
                           workdir)  # Finite checkpoints at step 6.
  config = demo_config(**{"optim.lr": 1e6, "train.num_epochs": 3})  # Resumed, it diverges.
  with pytest.raises(train.TrainingDiverged,
                     match=r"at step (\d+) \(learning rate 1e\+06\); the last checkpoint, step 6, "):
    train.train_and_evaluate(config, workdir)
  assert not os.path.exists(os.path.join(workdir, "results.json"))
  kept = {kind: [int(s) for s in os.listdir(os.path.join(workdir, "checkpoints", kind))
                 if s.isdigit()] for kind in ("latest", "best")}
  assert kept == {"latest": [6], "best": [6]}  # Nothing non-finite was saved.
  for step in kept["latest"]:
    model = run_model.load_trained(workdir, step).model
    assert all(np.isfinite(np.asarray(x)).all()
               for x in jax.tree.leaves(nnx.state(model, nnx.Param))), step


def _fresh_variables(config):
  from efficientnet_jax import steps  # pylint: disable=g-import-not-at-top

  model, _ = run_model.build(train.resolve_config(config))
  _, params, batch_stats, _ = steps.split_model(model)
  return steps.Variables(params, batch_stats)


def test_a_failed_checkpoint_write_stops_the_run_at_once_and_keeps_the_earlier_ones(
    demo_data, tmp_path, monkeypatch):
  from orbax.checkpoint._src.handlers import json_checkpoint_handler  # pylint: disable=g-import-not-at-top

  original = json_checkpoint_handler.JsonCheckpointHandler._save_fn  # pylint: disable=protected-access

  async def failing(self, x, directory):
    path = str(directory)
    if "/latest/" in path and "/latest/6." not in path:  # Step 6's write succeeds.
      raise OSError(28, "No space left on device", path)
    return await original(self, x, directory)

  monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", failing)
  workdir = str(tmp_path / "run")
  config = demo_config(**{"train.num_epochs": 3})
  with pytest.raises(checkpoint.CheckpointSaveError,
                     match=r"checkpoints/latest failed: \[Errno 28\] No space left on device"):
    train.train_and_evaluate(config, workdir)
  monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", original)
  latest = os.path.join(workdir, "checkpoints", "latest")
  assert [s for s in os.listdir(latest) if s.isdigit()] == ["6"]
  os.makedirs(os.path.join(latest, "13.orbax-checkpoint-tmp-1234"))  # As a killed write leaves.
  step, params = _latest_params(workdir, config)  # Opening the managers cleans it up.
  assert step == 6 and all(np.isfinite(p).all() for p in jax.tree.leaves(params))
  assert not any(".orbax-checkpoint-tmp" in s for s in os.listdir(latest))


def test_sigterm_after_the_last_step_saves_and_a_rerun_goes_straight_to_the_test(
    demo_data, tmp_path, monkeypatch):
  workdir = str(tmp_path / "run")
  config = demo_config(**{"train.num_epochs": 1})
  original = data.eval_iterator

  def signalling(data_config, split, **kwargs):
    if split == "test":
      os.kill(os.getpid(), signal.SIGTERM)  # During the final test evaluation.
    return original(data_config, split, **kwargs)

  monkeypatch.setattr(data, "eval_iterator", signalling)
  assert train.train_and_evaluate(config, workdir) is None
  assert not os.path.exists(os.path.join(workdir, "results.json"))
  monkeypatch.setattr(data, "eval_iterator", original)
  trained = []
  original_train = parallel.global_batch

  def recording(local, mesh):
    if "mask" not in local:
      trained.append(1)
    return original_train(local, mesh)

  monkeypatch.setattr(parallel, "global_batch", recording)
  results = train.train_and_evaluate(config, workdir)
  assert trained == [] and results["steps"] == 6
  assert json.load(open(os.path.join(workdir, "results.json")))["test"]["num_examples"] == 40


def test_unreadable_checkpoints_are_moved_aside_and_the_previous_ones_used(demo_data, tmp_path):
  workdir = str(tmp_path / "run")
  config = demo_config(**{"train.num_epochs": 2, "eval.test_at_end": False})
  train.train_and_evaluate(config, workdir)
  latest = os.path.join(workdir, "checkpoints", "latest")
  steps_kept = sorted(int(s) for s in os.listdir(latest) if s.isdigit())
  assert steps_kept == [6, 12]
  for folder, _, files in os.walk(os.path.join(latest, "12", "state")):
    for name in files:  # Truncate every file of the newest step's state.
      open(os.path.join(folder, name), "w").close()
  step, _ = _latest_params(workdir, config)
  assert step == 6
  assert sorted(os.listdir(latest)) == ["12.unreadable", "6"]

  best = os.path.join(workdir, "checkpoints", "best")
  (best_step,) = [s for s in os.listdir(best) if s.isdigit()]
  for folder, _, files in os.walk(os.path.join(best, best_step, "model")):
    for name in files:
      open(os.path.join(folder, name), "w").close()
  with checkpoint.Checkpoints(workdir, config.checkpoint) as ckpts:
    with pytest.raises(checkpoint.NotFoundError, match=r"--checkpoint=latest"):
      ckpts.restore_best(_fresh_variables(config))
  assert os.listdir(best) == [f"{best_step}.unreadable"]


def test_the_first_loss_line_after_a_resume_covers_the_whole_interval(demo_data, tmp_path):
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  from tensorboard.util import tensor_util  # pylint: disable=g-import-not-at-top

  common = {"train.num_epochs": 1, "eval.test_at_end": False, "train.log_every_steps": 4}
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  train.train_and_evaluate(demo_config(**common), straight)
  train.train_and_evaluate(demo_config(**common, **{"train.stop_at_step": 3}), resumed)
  train.train_and_evaluate(demo_config(**common), resumed)

  def loss_at_4(workdir):
    events = event_accumulator.EventAccumulator(workdir, size_guidance={"tensors": 0})
    events.Reload()
    return [float(tensor_util.make_ndarray(e.tensor_proto)) for e in events.Tensors("train/loss")
            if e.step == 4]

  assert loss_at_4(resumed) == pytest.approx(loss_at_4(straight), rel=1e-6)


# --- command lines: one-line errors, no library noise, no leaked shared memory -----------------


def test_user_errors_print_one_line_without_a_traceback(demo_data, tmp_path):
  cases = [
      ([sys.executable, "-m", "efficientnet_jax.main", "--config=configs/nope.py",
        f"--workdir={tmp_path}"], "Error: cannot load --config=configs/nope.py"),
      (_main(tmp_path, "--config.optim.lr=-1"), "Error: 1 bad config value(s):"),
      ([sys.executable, "-m", "efficientnet_jax.prepare", f"--dir={tmp_path / 'nope'}",
        f"--tfds_dir={tmp_path / 'tfds'}"], "Error: Data folder"),
  ]
  for command, start in cases:
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=_env(),
                          timeout=300)
    assert proc.returncode == 1 and proc.stderr.startswith(start), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) <= 3, proc.stderr


def _our_shared_memory() -> set[str]:
  return {n for n in os.listdir("/dev/shm") if n.startswith("psm_")}


@pytest.mark.serial  # Another test's input workers would add their shared memory meanwhile.
def test_runs_leave_no_shared_memory_and_print_only_our_lines(demo_data, tmp_path):
  before = _our_shared_memory()
  workdir = str(tmp_path / "run")
  proc = subprocess.run(_main(workdir, "--config.train.num_epochs=1", "--config.data.workers=2"),
                        cwd=ROOT, capture_output=True, text=True, env=_env(), timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert not (_our_shared_memory() - before)
  ours = [line for line in proc.stderr.splitlines()
          if line.startswith(("I", "W", "E")) and ".py:" in line.split("]")[0]]
  noise = [line for line in proc.stderr.splitlines() if line not in ours and line.strip()]
  # Preparation's own progress bar is ours too; nothing else (TF/XLA/TFDS/Orbax chatter).
  assert all(line.startswith(("Verifying", "Storing")) for line in noise), noise[:10]
  assert "Done:" in proc.stderr

  interrupted = str(tmp_path / "interrupted")
  run = subprocess.Popen(_main(interrupted, "--config.train.num_epochs=50",
                               "--config.data.workers=2", "--config.train.log_every_steps=1"),
                         cwd=ROOT, stderr=subprocess.PIPE, text=True, env=_env())
  for line in run.stderr:
    if " step 2/" in line:
      run.send_signal(signal.SIGTERM)
      break
  run.communicate(timeout=300)
  assert run.returncode == 0
  deadline = time.time() + 30  # Worker processes end after their parent.
  while _our_shared_memory() - before and time.time() < deadline:
    time.sleep(1)
  assert not (_our_shared_memory() - before)


# --- kill -9 anywhere, rerun: the same results as an uninterrupted run -----------------------


# Two epochs, a checkpoint every other step: many writes for a kill to land in.
CRASH = ("--config.train.num_epochs=2", "--config.checkpoint.every_steps=2",
         "--config.train.log_every_steps=1")


def _run_to_completion(workdir, env):
  proc = subprocess.run(_main(workdir, *CRASH), cwd=ROOT, capture_output=True, text=True, env=env,
                        timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.load(open(os.path.join(workdir, "results.json")))


def _weights(workdir):
  model = run_model.load_trained(workdir, "latest").model
  return jax.tree.leaves(nnx.state(model, nnx.Param)) + jax.tree.leaves(
      nnx.state(model, nnx.BatchStat))


def test_kill_9_at_random_points_then_rerunning_gives_the_uninterrupted_results(tmp_path):
  env = _env(EFFICIENTNET_JAX_DEMO_DATA=str(tmp_path / "data"))  # Prepared by the first run.
  crashed = str(tmp_path / "crashed")
  rng = np.random.default_rng(0)
  # Where each kill lands: a random delay (seconds) after a line: during preparation, around
  # the saves of the first epoch's end, after a validation.
  for marker in ("Preparing", " step 6/", "epoch 1/2 validation"):
    delay = rng.uniform(0.0, 1.5)
    proc = subprocess.Popen(_main(crashed, *CRASH), cwd=ROOT, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    for line in proc.stderr:
      if marker in line:
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGKILL)
        break
    proc.wait(timeout=300)
    assert proc.returncode in (-signal.SIGKILL, 0), proc.returncode
  results = _run_to_completion(crashed, env)
  straight = _run_to_completion(str(tmp_path / "straight"), env)
  for key in ("test", "best_checkpoint", "steps", "epochs", "stopped_early"):
    assert results[key] == straight[key], key
  for ours, theirs in zip(_weights(crashed), _weights(str(tmp_path / "straight")), strict=True):
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
