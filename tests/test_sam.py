"""SAM (optim.sam_rho, optim.sam_adaptive): the train step's update against a reference written
by hand, on TinyNet (float32 and bfloat16 compute), and the perturbation on 2 parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny_net
from efficientnet_jax import optim, parallel, steps
from efficientnet_jax.config import get_config

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)
SMOOTHING = 0.1
# Adam's first step moves each parameter by lr * g / (|g| + eps): with eps = 1 that is a
# smooth function of the gradient, so the update shows the gradient SAM took.
LR, EPS, RHO = 1.0, 1.0, 0.5


def _optim_config(**overrides):
  cfg = get_config().optim
  cfg.update(dict(lr=LR, eps=EPS, weight_decay=0.0, label_smoothing=SMOOTHING), **overrides)
  return cfg


def test_perturbation_of_two_parameters():
  params, grads = {"a": jnp.float32(3.0), "b": jnp.float32(-4.0)}, {"a": 1.0, "b": 2.0}
  e = optim.sam_perturbation(grads, params, rho=0.1, adaptive=False)
  np.testing.assert_allclose([e["a"], e["b"]], 0.1 * np.array([1, 2]) / np.sqrt(5), rtol=1e-6)
  # Adaptive: T = |w| = (3, 4), e = rho T^2 g / ||T g|| with T g = (3, 8).
  e = optim.sam_perturbation(grads, params, rho=0.1, adaptive=True)
  np.testing.assert_allclose([e["a"], e["b"]], 0.1 * np.array([9, 32]) / np.sqrt(73), rtol=1e-6)
  # Masked (frozen) parameters count nowhere and stay put.
  e = optim.sam_perturbation(grads, params, rho=0.1, adaptive=False, mask={"a": False, "b": True})
  np.testing.assert_allclose([e["a"], e["b"]], [0.0, 0.1], rtol=1e-6)


def _reference_update(p0, batch, rho, adaptive):
  """Parameters after one SAM step with Adam from zero state, written out by hand."""
  p0 = {k: jnp.asarray(v) for k, v in p0.items()}
  grad = jax.grad(lambda p: tiny_net.reference_loss(p, batch, MEAN, STD, SMOOTHING))
  g = grad(p0)
  if rho > 0:
    t = {k: jnp.abs(w) if adaptive else 1.0 for k, w in p0.items()}
    norm = jnp.sqrt(sum(jnp.sum((t[k] * g[k]) ** 2) for k in g))
    g = grad({k: p0[k] + rho * t[k] ** 2 * g[k] / norm for k in p0})
  return tiny_net.adam_first_step(p0, g, LR, EPS)


@pytest.mark.parametrize("dtype,adaptive,tolerance", [
    (jnp.float32, False, 1e-5), (jnp.float32, True, 1e-5), (jnp.bfloat16, False, 5e-3)])
def test_sam_step_matches_the_hand_written_update(dtype, adaptive, tolerance):
  batch = tiny_net.random_batch(16)
  model = tiny_net.TinyNet(dtype=dtype)
  p0 = tiny_net.plain_params(model)
  mesh = parallel.create_mesh()
  compiled, state = steps.build(
      model, _optim_config(sam_rho=RHO, sam_adaptive=adaptive), mesh, mean=MEAN, std=STD,
      steps_per_epoch=1, num_epochs=1)
  state, _ = compiled.train(state, parallel.global_batch(batch, mesh))
  after = tiny_net.plain_params(compiled.model(state.variables.weights()))

  expected = _reference_update(p0, batch, RHO, adaptive)
  without_sam = _reference_update(p0, batch, 0.0, adaptive)
  for key in p0:
    np.testing.assert_allclose(after[key], expected[key], atol=tolerance, rtol=tolerance, err_msg=key)
  # The test can tell SAM from a plain step: their updates differ far beyond the tolerance.
  assert max(np.abs(expected[k] - without_sam[k]).max() for k in p0) > 5 * tolerance
