"""Real multi-process training on CPU: 2 processes x 2 devices each (JAX's distributed
runtime on localhost, gloo collectives), started by launch/local_multiprocess.sh, against
1 process x 8 devices; each run's checkpoint continued on the other topology (and on 1
device); each process's share of the training and evaluation data.
"""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from test_train_configs import load_config

from efficientnet_jax import checkpoint, data, ports, steps, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow  # Whole training runs; make test starts these first.
DEMO = os.path.join(ROOT, "configs", "demo.py")
TIMEOUT = 600
# One demo epoch (6 steps of 16 images, validation, test) at 32 px. No drop-path: its
# per-example random masks follow batch positions, which differ between topologies (process
# i feeds examples i, i + P, ... of each global batch). Adam's eps damps the sign-like first
# updates that would turn rounding differences of near-zero gradients into +-lr steps.
OVERRIDES = {"data.image_size": 32, "model.depthwise": "conv", "model.drop_connect_rate": 0.0,
             "optim.lr": 1e-4, "optim.eps": 1e-3, "train.num_epochs": 1,
             "train.log_every_steps": 1, "train.num_sample_images": 0, "eval.batch_size": 16}


def flag_args(**overrides) -> list[str]:
  return [f"--config.{k}={v}" for k, v in {**OVERRIDES, **overrides}.items()]


def demo_config(**overrides):
  return load_config(DEMO, *flag_args(**overrides))


@pytest.fixture(scope="module")
def demo_env(tmp_path_factory):
  """Environment with a fresh demo data folder (prepared by the first run's process 0)."""
  root = str(tmp_path_factory.mktemp("demo_data"))
  os.environ["EFFICIENTNET_JAX_DEMO_DATA"] = root
  yield {**os.environ, "JAX_PLATFORMS": "cpu"}
  del os.environ["EFFICIENTNET_JAX_DEMO_DATA"]


def _check(proc: subprocess.CompletedProcess, log_dir: str | None = None) -> None:
  logs = proc.stderr[-4000:]
  if log_dir:
    for name in sorted(os.listdir(log_dir)):
      logs += f"\n--- {name}\n" + open(os.path.join(log_dir, name)).read()[-3000:]
  assert proc.returncode == 0, logs


@pytest.fixture(scope="module")
def runs(demo_env, tmp_path_factory):
  """Workdirs of the same one-epoch run on 2 processes x 2 devices and 1 process x 8."""
  base = tmp_path_factory.mktemp("runs")
  multi, single, logs = str(base / "multi"), str(base / "single"), str(base / "logs")
  proc = subprocess.run(
      [os.path.join(ROOT, "launch", "local_multiprocess.sh"), "2", f"--config={DEMO}",
       f"--workdir={multi}", *flag_args()], cwd=ROOT, capture_output=True, text=True,
      timeout=TIMEOUT,
      env={**demo_env, "PYTHON": sys.executable, "DEVICES_PER_PROCESS": "2", "LOG_DIR": logs})
  _check(proc, logs)
  proc = subprocess.run(
      [sys.executable, "-m", "efficientnet_jax.main", f"--config={DEMO}", f"--workdir={single}",
       *flag_args()], cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT,
      env={**demo_env, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  _check(proc)
  return {"multi": multi, "single": single, "logs": logs}


def _train_losses(workdir: str) -> dict[int, float]:
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  from tensorboard.util import tensor_util  # pylint: disable=g-import-not-at-top

  events = event_accumulator.EventAccumulator(workdir, size_guidance={"tensors": 0})
  events.Reload()
  return {e.step: float(tensor_util.make_ndarray(e.tensor_proto))
          for e in events.Tensors("train/loss")}


def _restore(workdir: str, **overrides):
  """(step, params) of the latest checkpoint, restored by this 1-device process."""
  config = train.resolve_config(demo_config(**overrides))
  with checkpoint.Checkpoints(workdir, config.checkpoint) as ckpts:
    trainer = train.Trainer(config, workdir, ckpts)
    return trainer.step, jax.device_get(trainer.state.variables.params)


def test_two_processes_train_like_one_process_with_as_many_devices(runs):
  multi_losses, single_losses = _train_losses(runs["multi"]), _train_losses(runs["single"])
  assert sorted(multi_losses) == list(range(1, 7))
  np.testing.assert_allclose([multi_losses[s] for s in range(1, 7)],
                             [single_losses[s] for s in range(1, 7)], rtol=2e-4)

  # Checkpoints written on 2 processes x 2 devices and 1 x 8 restore onto this 1 device.
  assert jax.device_count() == 1
  step_m, params_m = _restore(runs["multi"])
  step_s, params_s = _restore(runs["single"])
  assert step_m == step_s == 6
  leaves_m, leaves_s = jax.tree.leaves(params_m), jax.tree.leaves(params_s)
  assert len(leaves_m) == len(leaves_s) > 100
  for a, b in zip(leaves_m, leaves_s):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)

  # Validation and test evaluate every example once over both processes; only process 0
  # writes the run's files.
  results = {k: json.load(open(os.path.join(runs[k], "results.json"))) for k in ("multi", "single")}
  assert results["multi"]["test"]["num_examples"] == 40  # 4 classes x 10.
  for key in ("top1", "top5"):
    assert results["multi"]["test"][key] == results["single"]["test"][key]
  np.testing.assert_allclose(results["multi"]["test"]["loss"], results["single"]["test"]["loss"],
                             rtol=1e-3)
  best = {k: r["best_checkpoint"] for k, r in results.items()}
  assert best["multi"]["val_top1"] == best["single"]["val_top1"]
  log_1 = open(os.path.join(runs["logs"], "process_1.log")).read()
  assert "Process 1 of 2" in log_1 and "epoch 1/1 step" not in log_1  # Progress: process 0.
  data_files = os.listdir(os.path.join(runs["multi"], "checkpoints", "latest", "6", "data"))
  assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(data_files)


@pytest.fixture(scope="module")
def continued_on_one(runs, tmp_path_factory):
  """The 2-process run's checkpoint continued here, on 1 device, to step 8."""
  workdir = str(tmp_path_factory.mktemp("continued_on_one") / "run")
  shutil.copytree(runs["multi"], workdir)
  seen = []
  original = steps.CompiledSteps.train

  def recording(self, state, batch):  # The batches steps consume (not those prefetched).
    seen.append(np.asarray(batch["label"]).tolist())
    return original(self, state, batch)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(steps.CompiledSteps, "train", recording)
    assert train.train_and_evaluate(demo_config(**CONTINUE), workdir) is None  # Stopped, saved.
  return workdir, seen


CONTINUE = {"train.num_epochs": 2, "train.stop_at_step": 8, "eval.test_at_end": False}


def test_one_process_continues_a_two_process_checkpoint(continued_on_one):
  workdir, seen = continued_on_one
  # Steps 7 and 8 take the global batches that follow the 2-process run's position.
  config = demo_config()
  reference = data.train_iterator(config.data, global_batch_size=16, seed=config.seed,
                                  process_index=0, process_count=1)
  expected = [np.asarray(next(reference)["label"]).tolist() for _ in range(8)][6:]
  assert seen == expected
  step, params = _restore(workdir)
  assert step == 8
  assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(params))


def test_two_processes_continue_an_eight_device_checkpoint(runs, continued_on_one, demo_env,
                                                           tmp_path):
  workdir, logs = str(tmp_path / "run"), str(tmp_path / "logs")
  shutil.copytree(runs["single"], workdir)
  proc = subprocess.run(
      [os.path.join(ROOT, "launch", "local_multiprocess.sh"), "2", f"--config={DEMO}",
       f"--workdir={workdir}", *flag_args(**CONTINUE)], cwd=ROOT, capture_output=True,
      text=True, timeout=TIMEOUT,
      env={**demo_env, "PYTHON": sys.executable, "DEVICES_PER_PROCESS": "2", "LOG_DIR": logs})
  _check(proc, logs)
  assert "at step 6" in proc.stderr and "Stopping at step 8" in proc.stderr

  # Both continuations (8 devices -> 2x2, 2x2 -> 1) train alike.
  step, params = _restore(workdir)
  step_one, params_one = _restore(continued_on_one[0])
  assert step == step_one == 8
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params_one)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


SHARE_SCRIPT = r"""
import json, os, signal, sys
import jax, numpy as np
from efficientnet_jax import checkpoint, data, parallel
from test_multiprocess import demo_config

parallel.initialize(sys.argv[1], 2, int(sys.argv[2]))
config = demo_config()
mesh = parallel.create_mesh()
train_iter = data.train_iterator(config.data, global_batch_size=16, seed=config.seed)
train = [[f"{l}:{int(np.asarray(x, np.int64).sum())}" for x, l in zip(b["image"], b["label"])]
         for b in (next(train_iter) for _ in range(6))]
count = jax.jit(lambda m: m.sum(), out_shardings=parallel.replicated(mesh))
counted, labels = 0, []
for batch in data.eval_iterator(config.data, "test", global_batch_size=16):
  counted += int(count(parallel.global_batch(batch, mesh)["mask"]))
  labels += np.asarray(batch["label"])[np.asarray(batch["mask"])].tolist()
with checkpoint.StopSignal() as stop:
  if jax.process_index() == 1:
    os.kill(os.getpid(), signal.SIGTERM)
  agree = [parallel.any_process(stop.requested()), parallel.any_process(False)]
print(json.dumps({"train": train, "counted": counted, "labels": labels, "agree": agree}))
"""


def test_each_process_reads_a_disjoint_share_and_evaluation_covers_every_example(demo_env):
  config = demo_config()
  data.ensure_prepared(config.data)
  port = ports.free_port()
  env = {**demo_env, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
         "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), ROOT])}
  procs = [subprocess.Popen([sys.executable, "-c", SHARE_SCRIPT, f"127.0.0.1:{port}", str(i)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for i in range(2)]
  outs = []
  for proc in procs:
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err[-4000:]
    outs.append(json.loads(out.strip().splitlines()[-1]))

  whole = data.train_iterator(config.data, global_batch_size=16, seed=config.seed,
                              process_index=0, process_count=1)
  for step in range(6):
    shares = [set(o["train"][step]) for o in outs]
    assert len(shares[0]) == len(shares[1]) == 8 and not shares[0] & shares[1]
    batch = next(whole)
    assert shares[0] | shares[1] == {f"{l}:{int(np.asarray(x, np.int64).sum())}"
                                     for x, l in zip(batch["image"], batch["label"])}
  assert [o["counted"] for o in outs] == [40, 40]  # The global mask sum, on both processes.
  # A SIGTERM received by process 1 alone stops both (after the same step).
  assert [o["agree"] for o in outs] == [[True, False]] * 2
  all_labels = [label for o in outs for label in o["labels"]]
  assert len(outs[0]["labels"]) == len(outs[1]["labels"]) == 20
  assert sorted(all_labels) == sorted(l for b in data.eval_iterator(
      config.data, "test", global_batch_size=16, process_index=0, process_count=1)
      for l, m in zip(b["label"], b["mask"]) if m)
