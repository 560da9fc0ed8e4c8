"""Gradient accumulation (train.accumulate_steps): one optimizer step per k micro-batches.

k micro-batches of n give the update of one batch of k*n when BatchNorm is frozen; with
BatchNorm training, statistics are per micro-batch and running averages move k times
(checked against a hand-written TinyNet reference). An optimizer step is atomic: the state
counts optimizer steps, and there is no state between micro-batches to save or resume.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny_net
from efficientnet_jax import parallel, steps
from test_train_steps import MEAN, STD, Harness, _optim_config, frozen_bn_models, tiny_data

# Adam's first step moves each parameter by lr * g / (|g| + eps): with lr = eps >> |g|
# nearly the gradient itself.
LR, EPS = 1e3, 1e3


def _weights(h):
  return jax.device_get(h.state.variables.weights())


def _first_moment(state):
  """Adam's first moment: after one step from zero, (1 - b1) times the gradient applied."""
  adam = [s for s in jax.tree.leaves(state.opt_state, is_leaf=lambda s: hasattr(s, "mu"))
          if hasattr(s, "mu")]
  return jax.tree.leaves(jax.device_get(adam[0].mu))


def test_micro_batches_give_the_update_of_the_whole_batch_with_frozen_batchnorm():
  data = tiny_data()  # 16 images.
  config = _optim_config(lr=LR, eps=EPS, weight_decay=0.0)
  model_whole, model_accumulated = frozen_bn_models(data, 2)
  whole = Harness(model_whole, config)
  before = _weights(whole)
  loss_whole = float(whole.train(data)["loss"])
  accumulated = Harness(model_accumulated, config, accumulate_steps=4)  # 4 x 4.
  metrics = accumulated.train(data)
  assert int(accumulated.state.step) == 1  # One optimizer step, whatever k.
  assert float(metrics["loss"]) == pytest.approx(loss_whole, rel=1e-5)
  # The same gradient (Adam's first moment) and update, to 5e-4 of the largest entry: B0's
  # gradients (up to ~100 here) are sums over examples and pixels that cancel to far below
  # that in places, so float32 rounding differs by up to ~1.2e-4 of it with the summation order.
  for a, w in ((_first_moment(accumulated.state), _first_moment(whole.state)),
               (_moves(accumulated, before), _moves(whole, before))):
    scale = max(np.abs(leaf).max() for leaf in w)
    for leaf_a, leaf_w in zip(a, w):
      np.testing.assert_allclose(leaf_a, leaf_w, rtol=1e-3, atol=5e-4 * scale)


def _moves(harness, before):
  return [a - b for a, b in zip(jax.tree.leaves(_weights(harness)), jax.tree.leaves(before))]


def _micro_reference(p0, batch, micro_rows, k):
  """Parameters and BatchNorm running mean after one accumulated step, by hand."""
  p0 = {key: jnp.asarray(v) for key, v in p0.items()}
  grads, running_mean = [], np.zeros(tiny_net.FEATURES, np.float32)
  for j in range(k):
    micro = {key: v[micro_rows[j]] for key, v in batch.items()}
    grads.append(jax.grad(lambda p: tiny_net.reference_loss(p, micro, MEAN, STD, 0.1))(p0))
    x = (micro["image"].astype(np.float32) / 255 - np.float32(MEAN)) / np.float32(STD)
    h = x.mean(axis=(1, 2)) @ p0["hidden/kernel"] + p0["hidden/bias"]
    running_mean = tiny_net.BN_MOMENTUM * running_mean + (1 - tiny_net.BN_MOMENTUM) * np.asarray(h.mean(0))
  g = {key: sum(gj[key] for gj in grads) / k for key in p0}
  return tiny_net.adam_first_step(p0, g, LR, EPS), running_mean


def test_batchnorm_statistics_are_per_micro_batch_and_running_averages_move_k_times():
  batch, k = tiny_net.random_batch(12), 3
  model = tiny_net.TinyNet()
  p0 = tiny_net.plain_params(model)
  mesh = parallel.create_mesh()
  compiled, state = steps.build(model, _optim_config(lr=LR, eps=EPS, weight_decay=0.0), mesh,
                                mean=MEAN, std=STD, steps_per_epoch=1, num_epochs=1,
                                accumulate_steps=k)
  state, _ = compiled.train(state, parallel.global_batch(batch, mesh))
  after = compiled.model(state.variables.weights())
  # One device: micro-batch j is rows 4j..4j+3.
  expected, running_mean = _micro_reference(p0, batch, [slice(4 * j, 4 * j + 4) for j in range(k)], k)
  for key, value in tiny_net.plain_params(after).items():
    np.testing.assert_allclose(value, expected[key], atol=1e-6, rtol=1e-5, err_msg=key)
  np.testing.assert_allclose(after.bn.mean.value, running_mean, atol=1e-6, rtol=1e-5)
  # Statistics over the whole batch would differ: the reference tells them apart.
  whole, _ = _micro_reference(p0, batch, [slice(None)], 1)
  assert max(np.abs(whole[key] - expected[key]).max() for key in p0) > 1e-3


def test_batch_size_not_divisible_names_the_fields():
  batch, mesh = tiny_net.random_batch(10), parallel.create_mesh()
  compiled, state = steps.build(tiny_net.TinyNet(), _optim_config(), mesh, mean=MEAN, std=STD,
                                steps_per_epoch=1, num_epochs=1, accumulate_steps=4)
  with pytest.raises(ValueError, match=r"train.batch_size=10 must be a multiple of train.accumulate_steps=4"):
    compiled.train(state, parallel.global_batch(batch, mesh))
  with pytest.raises(ValueError, match="train.accumulate_steps=0"):
    steps.build(tiny_net.TinyNet(), _optim_config(), mesh, mean=MEAN, std=STD, steps_per_epoch=1,
                num_epochs=1, accumulate_steps=0)
