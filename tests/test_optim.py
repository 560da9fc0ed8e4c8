"""optim.py: loss, weight-decay mask, schedules, reduce-on-plateau, early stopping, freezing."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from efficientnet_jax import optim
from efficientnet_jax.config import get_config


def _optim_config(**overrides) -> ml_collections.ConfigDict:
  cfg = get_config().optim
  cfg.update(overrides)
  return cfg


def _params():
  """A parameter tree shaped like the model's (kernels, BN scale/bias, biases)."""
  return {
      "stem": {"conv": {"kernel": jnp.ones((3, 3, 3, 4))}, "bn": {"scale": jnp.ones(4), "bias": jnp.zeros(4)}},
      "stages_0_0": {"se": {"reduce": {"kernel": jnp.ones((4, 2)), "bias": jnp.zeros(2)}}},
      "classifier": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)},
  }


def test_label_smoothed_cross_entropy_matches_formula():
  logits = jnp.array([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]])
  labels = jnp.array([0, 1])
  eps = 0.1
  logp = jax.nn.log_softmax(logits)
  targets = np.full((2, 3), eps / 3) + np.eye(3)[[0, 1]] * (1 - eps)
  expected = -(targets * logp).sum(-1)
  np.testing.assert_allclose(optim.cross_entropy_loss(logits, labels, eps), expected, rtol=1e-6)
  np.testing.assert_allclose(optim.cross_entropy_loss(logits, labels, 0.0),
                             -logp[jnp.arange(2), labels], rtol=1e-6)


def test_weight_decay_mask_excludes_bn_and_biases_only_when_asked():
  mask = optim.weight_decay_mask(_params(), exclude_bn_and_bias=True)
  assert mask["stem"]["conv"]["kernel"] and mask["classifier"]["kernel"]
  assert not mask["stem"]["bn"]["scale"] and not mask["stem"]["bn"]["bias"]
  assert not mask["stages_0_0"]["se"]["reduce"]["bias"] and not mask["classifier"]["bias"]
  assert all(jax.tree.leaves(optim.weight_decay_mask(_params(), exclude_bn_and_bias=False)))


def test_weight_decay_applies_only_where_masked():
  cfg = _optim_config(lr=0.1, weight_decay=0.5, wd_exclude_bn_and_bias=True)
  params = _params()
  tx = optim.create_optimizer(cfg, params)
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  # Zero gradient: the update is pure decay, -lr * wd * p, where decay applies.
  np.testing.assert_allclose(updates["stem"]["conv"]["kernel"], -0.05)
  np.testing.assert_allclose(updates["stem"]["bn"]["scale"], 0.0)


def test_learning_rate_is_a_state_value_the_step_can_set():
  cfg = _optim_config(lr=1e-3, weight_decay=0.0)
  params = _params()
  tx = optim.create_optimizer(cfg, params)
  grads = jax.tree.map(jnp.ones_like, params)
  state = tx.init(params)
  base, _ = tx.update(grads, state, params)
  scaled, new_state = tx.update(grads, optim.set_learning_rate(state, 1e-4), params)
  np.testing.assert_allclose(scaled["classifier"]["kernel"], 0.1 * base["classifier"]["kernel"], rtol=1e-5)
  assert float(new_state.hyperparams["learning_rate"]) == pytest.approx(1e-4)


def test_freeze_backbone_zeroes_all_but_classifier_updates():
  cfg = _optim_config(freeze_backbone=True, weight_decay=0.1)
  params = _params()
  tx = optim.create_optimizer(cfg, params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  for path, u in jax.tree_util.tree_flatten_with_path(updates)[0]:
    if path[0].key == "classifier":
      assert np.all(np.asarray(u) != 0)
    else:
      assert np.all(np.asarray(u) == 0), path


def test_grad_clipping_clips_to_the_global_norm():
  cfg = _optim_config(grad_clip_norm=1.0, weight_decay=0.0, b1=0.0)
  params = {"w": jnp.zeros(4)}
  tx = optim.create_optimizer(cfg, params)
  _, state = tx.update({"w": jnp.full(4, 100.0)}, tx.init(params), params)
  adam_state = state.inner_state[1][0]
  # With b1 = 0 Adam's first moment is the (clipped) gradient itself.
  np.testing.assert_allclose(jnp.linalg.norm(adam_state.mu["w"]), 1.0, rtol=1e-6)


def test_warmup_cosine_schedule():
  cfg = _optim_config(schedule="warmup_cosine", lr=1.0, warmup_epochs=1.0, cosine_end_lr=0.0)
  sched = optim.learning_rate_schedule(cfg, steps_per_epoch=10, num_epochs=4)
  assert float(sched(0)) == 0.0
  assert float(sched(5)) == pytest.approx(0.5)
  assert float(sched(10)) == pytest.approx(1.0)
  assert float(sched(25)) == pytest.approx(0.5, abs=1e-6)
  assert float(sched(40)) == pytest.approx(0.0, abs=1e-6)
  assert float(optim.learning_rate_schedule(_optim_config(), 10, 4)(17)) == pytest.approx(1e-3)


def test_unknown_schedule_names_the_field():
  with pytest.raises(ValueError, match="optim.schedule"):
    optim.learning_rate_schedule(_optim_config(schedule="linear"), 10, 4)


def _plateau(**kw) -> optim.Plateau:
  args = dict(factor=0.1, patience=3, threshold=1e-3, cooldown=0, min_scale=0.0)
  args.update(kw)
  return optim.Plateau(**args)


def test_plateau_reduces_after_patience_flat_evaluations_and_not_before():
  p = _plateau(patience=3)
  assert not p.update(1.0)  # First value: the best so far.
  for _ in range(3):  # `patience` flat evaluations are tolerated.
    assert not p.update(1.0)
    assert p.scale == 1.0
  assert p.update(1.0)  # One more: reduce.
  assert p.scale == pytest.approx(0.1)
  for _ in range(3):  # The count restarts after a reduction.
    assert not p.update(1.0)
  assert p.update(1.0)
  assert p.scale == pytest.approx(0.01)


def test_plateau_improvement_resets_and_threshold_is_relative():
  p = _plateau(patience=1, threshold=0.01)
  p.update(1.0)
  p.update(0.995)  # Less than 1% better: flat.
  assert p.num_bad == 1
  assert not p.update(0.98)  # 2% better: improvement, counter reset.
  assert p.num_bad == 0 and p.best == 0.98
  assert not p.update(0.98)
  assert p.update(0.98)


def test_plateau_cooldown_and_min_lr():
  p = _plateau(patience=0, cooldown=2, min_scale=0.05)
  p.update(1.0)
  assert p.update(1.0) and p.scale == pytest.approx(0.1)
  assert not p.update(1.0) and not p.update(1.0)  # Cooldown.
  assert p.update(1.0) and p.scale == pytest.approx(0.05)  # Floored at min_lr / lr.
  assert not p.update(1.0) and not p.update(1.0) and not p.update(1.0)
  assert p.scale == pytest.approx(0.05)


def test_plateau_from_config_uses_min_lr_over_lr():
  cfg = _optim_config(lr=1e-3)
  cfg.plateau.min_lr = 1e-5
  assert optim.Plateau.from_config(cfg).min_scale == pytest.approx(1e-2)


def test_early_stopping_triggers_after_patience_without_min_delta_improvement():
  e = optim.EarlyStopping(patience=2, min_delta=0.1)
  assert not e.update(1.0)
  assert not e.update(0.95)  # Not better by min_delta.
  assert not e.update(0.85)  # Better by more than 0.1: reset.
  assert not e.update(0.80)
  assert e.update(0.84)
  assert e.best == 0.85 and not math.isinf(e.best)


def test_ema_update():
  ema = optim.ema_update({"a": jnp.array(1.0)}, {"a": jnp.array(3.0)}, 0.75)
  assert float(ema["a"]) == pytest.approx(1.5)


def test_optimizer_state_is_jittable_with_injected_lr():
  cfg = _optim_config()
  params = _params()
  tx = optim.create_optimizer(cfg, params)

  @jax.jit
  def step(params, state, lr):
    grads = jax.tree.map(jnp.ones_like, params)
    updates, state = tx.update(grads, optim.set_learning_rate(state, lr), params)
    return optax.apply_updates(params, updates), state

  _, state = step(params, tx.init(params), 5e-4)
  assert float(state.hyperparams["learning_rate"]) == pytest.approx(5e-4)


def test_weight_decay_mask_on_a_models_nnx_state():
  # nnx.State paths end in the Variable's `.value`: the mask must look past it.
  from efficientnet_jax import steps  # pylint: disable=g-import-not-at-top
  from efficientnet_jax.models import create_model  # pylint: disable=g-import-not-at-top

  _, params, _, _ = steps.split_model(create_model("b0", num_classes=4))
  mask = optim.weight_decay_mask(params, exclude_bn_and_bias=True)
  assert mask["stem"]["conv"]["kernel"].value and mask["classifier"]["kernel"].value
  assert not mask["stem"]["bn"]["scale"].value and not mask["classifier"]["bias"].value
  assert 0 < sum(jax.tree.leaves(mask)) < len(jax.tree.leaves(mask))
