"""The train step's features on 8 forced CPU devices (a subprocess: the device count is
fixed when JAX starts): Mixup/CutMix pairs stay within each device's shard, SAM perturbs
along the global gradient (8 devices update as 1 does), and accumulation's micro-batch j
takes rows j*m..(j+1)*m-1 of every device's shard."""

import os
import subprocess
import sys

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)

SCRIPT = r"""
import sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import jax, numpy as np
import tiny_net, test_accumulate, test_mixup, test_sam
from efficientnet_jax import parallel, steps

assert jax.device_count() == 8, jax.devices()
eight, one = parallel.create_mesh(), parallel.create_mesh(jax.devices()[:1])

for kw in (dict(alpha=1.0), dict(cutmix_alpha=1.0)):
  test_mixup.check_train_step_mixes_within_shards(eight, kw, n=32)

batch = tiny_net.random_batch(32)
after = {}
for name, mesh in (("one", one), ("eight", eight)):
  compiled, state = steps.build(tiny_net.TinyNet(), test_sam._optim_config(sam_rho=0.5), mesh,
                                mean=test_sam.MEAN, std=test_sam.STD, steps_per_epoch=1, num_epochs=1)
  for _ in range(2):
    state, _ = compiled.train(state, parallel.global_batch(batch, mesh))
  after[name] = tiny_net.plain_params(compiled.model(state.variables.weights()))
for key in after["one"]:
  np.testing.assert_allclose(after["eight"][key], after["one"][key], rtol=1e-5, atol=1e-6, err_msg=key)

# 32 rows, 4 per device, k = 2: micro-batch j holds rows 4d + 2j and 4d + 2j + 1 of every device d.
model = tiny_net.TinyNet()
p0 = tiny_net.plain_params(model)
compiled, state = steps.build(model, test_sam._optim_config(lr=test_accumulate.LR, eps=test_accumulate.EPS),
                              eight, mean=test_accumulate.MEAN, std=test_accumulate.STD,
                              steps_per_epoch=1, num_epochs=1, accumulate_steps=2)
state, _ = compiled.train(state, parallel.global_batch(batch, eight))
rows = [[4 * d + 2 * j + r for d in range(8) for r in range(2)] for j in range(2)]
expected, running_mean = test_accumulate._micro_reference(p0, batch, rows, 2)
model = compiled.model(state.variables.weights())
for key, value in tiny_net.plain_params(model).items():
  np.testing.assert_allclose(value, expected[key], rtol=1e-5, atol=1e-6 * test_accumulate.LR, err_msg=key)
np.testing.assert_allclose(model.bn.mean.value, running_mean, rtol=1e-5, atol=1e-6)
print("ok")
"""


def test_mixup_sam_and_accumulation_on_eight_devices():
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-c", SCRIPT, TESTS, ROOT], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-4000:]
