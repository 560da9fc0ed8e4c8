"""Layer-wise learning-rate decay (optim.layer_decay) on B0's parameters: the geometric
schedule per block group, measured from actual optimizer updates, composed with the
weight-decay mask, freezing and the plateau scale; the per-group TensorBoard scalars."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny_net
from efficientnet_jax import metrics, optim, parallel, steps
from efficientnet_jax.config import get_config
from efficientnet_jax.models import create_model

DECAY, LR = 0.5, 0.1
# B0: stem, stages 0-6, head (head conv/BN + classifier): 9 groups, the stem at DECAY**8.
EXPECTED = {"stem": DECAY**8, **{f"stage{i}": DECAY**(7 - i) for i in range(7)}, "head": 1.0}


@pytest.fixture(scope="module")
def params():
  """B0's parameter tree (its names decide the groups), each leaf cut to 3 values."""
  _, params, _, _ = steps.split_model(create_model("b0", num_classes=4))
  return jax.tree.map(lambda p: jnp.linspace(-1.0, 1.0, 3), params)


def _optim_config(**overrides):
  cfg = get_config().optim
  cfg.update(dict(lr=LR, layer_decay=DECAY, weight_decay=0.0, eps=1e-12), **overrides)
  return cfg


def _expected_scale(path) -> float:
  name = str(path[0].key)
  if name.startswith("stages_"):
    return EXPECTED[f"stage{name.split('_')[1]}"]
  return EXPECTED["stem"] if name == "stem" else EXPECTED["head"]


def _update(cfg, params, grads, learning_rate=None):
  tx = optim.create_optimizer(cfg, params)
  state = tx.init(params)
  if learning_rate is not None:
    state = optim.set_learning_rate(state, learning_rate)
  updates, _ = jax.jit(tx.update)(grads, state, params)
  return jax.tree_util.tree_flatten_with_path(updates)[0]


def test_group_scales_are_geometric_from_the_head_down(params):
  _, scales = optim.layer_decay_scales(params, DECAY)
  assert list(scales) == list(EXPECTED)
  for group, scale in EXPECTED.items():
    assert scales[group] == pytest.approx(scale)


def test_effective_learning_rate_of_every_parameter(params):
  # Adam's first step with a unit gradient moves each parameter by its learning rate (to
  # float32's rounding of b2 in the bias correction, 6.4e-6).
  ones = jax.tree.map(jnp.ones_like, params)
  updates = _update(_optim_config(), params, ones)
  assert len(updates) > 200
  for path, u in updates:
    np.testing.assert_allclose(-np.asarray(u), LR * _expected_scale(path), rtol=1e-5,
                               err_msg=jax.tree_util.keystr(path))
  # The plateau's scale multiplies every group's rate.
  for path, u in _update(_optim_config(), params, ones, learning_rate=LR / 10):
    np.testing.assert_allclose(-np.asarray(u), LR / 10 * _expected_scale(path), rtol=1e-5)


def test_composes_with_weight_decay_mask_and_freezing(params):
  zeros = jax.tree.map(jnp.zeros_like, params)
  leaves = dict(jax.tree_util.tree_flatten_with_path(params)[0])
  # Zero gradient: the update is decoupled decay alone, -lr * scale * wd * w, where masked.
  for path, u in _update(_optim_config(weight_decay=0.5), params, zeros):
    decays = str(path[-2].key) not in ("bias", "scale")
    expected = -LR * _expected_scale(path) * 0.5 * np.asarray(leaves[path]) if decays else 0.0
    np.testing.assert_allclose(np.asarray(u), expected, rtol=1e-5, atol=1e-12)
  for path, u in _update(_optim_config(freeze_backbone=True), params,
                         jax.tree.map(jnp.ones_like, params)):
    expected = LR if str(path[0].key) == "classifier" else 0.0
    np.testing.assert_allclose(-np.asarray(u), expected, rtol=1e-5)


def test_tensorboard_scalars_show_each_group_rate(params):
  model = create_model("b0", num_classes=4)
  compiled, _ = steps.build(model, _optim_config(), parallel.create_mesh(), mean=(0.5,) * 3,
                            std=(0.25,) * 3, steps_per_epoch=1, num_epochs=1)
  collected = metrics.TrainMetrics.single_from_model_output(
      loss=jnp.ones(2), logits=jnp.eye(2, 4), labels=jnp.arange(2), learning_rate=jnp.float32(0.02),
      finite=jnp.bool_(True), step=jnp.int32(1))
  scalars = compiled.train_scalars(collected)
  assert scalars["train/learning_rate"] == pytest.approx(0.02)
  for group, scale in EXPECTED.items():
    assert scalars[f"train/lr/{group}"] == pytest.approx(0.02 * scale)


def test_errors_name_the_field():
  with pytest.raises(ValueError, match="optim.layer_decay=1.5"):
    optim.layer_decay_scales({"stem": jnp.ones(1)}, 1.5)
  _, tiny, _, _ = steps.split_model(tiny_net.TinyNet())
  with pytest.raises(ValueError, match=r"optim.layer_decay needs an EfficientNet.*'hidden'"):
    optim.create_optimizer(_optim_config(), tiny)
