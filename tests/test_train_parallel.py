"""Data parallelism: the steps training builds (steps.build), on 1 device and on 8 forced CPU
devices, give the same training.

Runs in a subprocess, because the device count is fixed when JAX starts.
"""

import json
import os
import subprocess
import sys

import numpy as np

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)

SCRIPT = r"""
import json, sys
import jax, numpy as np
from jax.sharding import Mesh
sys.path[:0] = [sys.argv[1], sys.argv[2]]
from test_train_steps import Harness, tiny_model, tiny_data, _optim_config
from efficientnet_jax import parallel

assert jax.device_count() == 8, jax.devices()
out = {}
data = tiny_data()
for name, mesh in (("one", Mesh(np.asarray(jax.devices()[:1]), ("data",))),
                   ("eight", parallel.create_mesh())):
  # Adam's eps damps its sign-like first steps, which would amplify rounding differences
  # of near-zero gradients (sums in another order) into +-lr updates.
  h = Harness(tiny_model(head_init="zeros"), _optim_config(lr=1e-3, eps=1e-3, weight_decay=0.0), mesh)
  losses = [float(h.train(data)["loss"]) for _ in range(3)]
  leaves = jax.tree.leaves(jax.device_get(h.state.variables.weights()))
  np.savez(sys.argv[3] + f"/{name}.npz", *leaves)
  sharding = h.state.variables.params["classifier"]["kernel"].value.sharding
  out[name] = {"losses": losses, "replicated": sharding.is_fully_replicated,
               "devices": len(sharding.device_set)}
try:
  parallel.host_batch_size(12, parallel.create_mesh(), "train.batch_size")
except ValueError as e:
  out["batch_error"] = str(e)
print(json.dumps(out))
"""


def test_one_vs_eight_devices_same_loss_and_parameters(tmp_path):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-c", SCRIPT, TESTS, ROOT, str(tmp_path)], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])

  assert out["one"]["devices"] == 1 and out["eight"]["devices"] == 8
  assert out["one"]["replicated"] and out["eight"]["replicated"]
  np.testing.assert_allclose(out["eight"]["losses"], out["one"]["losses"], rtol=2e-4)
  one, eight = np.load(tmp_path / "one.npz"), np.load(tmp_path / "eight.npz")
  assert len(one.files) == len(eight.files) > 100
  # 3 steps move parameters by up to ~3e-3 (lr 1e-3); the devices agree far closer.
  for key in one.files:
    np.testing.assert_allclose(eight[key], one[key], rtol=1e-3, atol=1e-4, err_msg=key)

  # A global batch the devices cannot split evenly: a clear error naming the field.
  assert "train.batch_size=12" in out["batch_error"] and "8" in out["batch_error"]
