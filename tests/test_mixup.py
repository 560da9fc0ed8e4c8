"""Mixup / CutMix (config.mixup): the mixing against its definition on images of known
content, and in the train step (pairs within each device's shard, soft targets, accuracy
against the dominant label, the TensorBoard view) on 1 device here and on 8 in
test_train_parallel_features.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny_net
from efficientnet_jax import mixup, optim, parallel, steps
from efficientnet_jax.config import get_config

CLASSES, SMOOTHING = 10, 0.1
MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


def _mixing(**overrides):
  args = dict(alpha=0.0, cutmix_alpha=0.0, prob=1.0, switch_prob=0.5, off_step=0, seed=0)
  return mixup.Mixing(**{**args, **overrides})


def _flat_images(n=8, size=12):
  """Image i is the constant 20 i + 10; label i (every pair has two different labels)."""
  values = 20 * np.arange(n) + 10
  images = np.broadcast_to(values[:, None, None, None], (n, size, size, 3)).astype(np.uint8)
  return images, np.arange(n, dtype=np.int32), values.astype(np.float32)


def _check_targets(mixed, labels):
  """Soft targets sum to one and give each label the share lam (or 1 - lam) of 1 - smoothing."""
  t = np.asarray(mixup.targets(labels, mixed.partner_labels, mixed.lam, CLASSES, SMOOTHING))
  lam, rows = float(mixed.lam), np.arange(len(labels))
  np.testing.assert_allclose(t.sum(-1), 1.0, rtol=1e-6)
  own, partner = t[rows, labels] - SMOOTHING / CLASSES, t[rows, mixed.partner_labels] - SMOOTHING / CLASSES
  np.testing.assert_allclose(own, lam * (1 - SMOOTHING), atol=1e-6)
  np.testing.assert_allclose(partner, (1 - lam) * (1 - SMOOTHING), atol=1e-6)


def test_partners_are_mirrored_within_each_shard():
  np.testing.assert_array_equal(mixup.partners(jnp.arange(8), 2), [3, 2, 1, 0, 7, 6, 5, 4])
  np.testing.assert_array_equal(mixup.partners(jnp.arange(8), 1), np.arange(8)[::-1])
  with pytest.raises(ValueError, match="3 equal shards"):
    mixup.partners(jnp.arange(8), 3)


def test_mixup_pixels_and_targets_follow_the_coefficient():
  images, labels, values = _flat_images()
  mixing = _mixing(alpha=0.4)
  lams = []
  for step in range(6):
    mixed = mixing(images, labels, step, num_shards=1)
    lam = float(mixed.lam)
    lams.append(lam)
    partner_values = values[::-1]
    expected = lam * values + (1 - lam) * partner_values
    np.testing.assert_allclose(np.asarray(mixed.images)[:, 0, 0, 0], expected, rtol=1e-5)
    assert np.ptp(np.asarray(mixed.images), axis=(1, 2, 3)).max() == 0  # Uniform weights.
    np.testing.assert_array_equal(mixed.partner_labels, labels[::-1])
    _check_targets(mixed, labels)
  assert len(set(lams)) == 6 and all(0 < lam < 1 for lam in lams)


def test_cutmix_targets_match_the_pasted_area():
  images, labels, values = _flat_images(size=16)
  mixing = _mixing(cutmix_alpha=1.0)
  areas = []
  for step in range(8):
    mixed = mixing(images, labels, step, num_shards=1)
    out = np.asarray(mixed.images)
    for i in range(len(labels)):
      pasted = out[i, :, :, 0] == values[::-1][i]
      assert np.all(pasted | (out[i, :, :, 0] == values[i]))  # Every pixel from one of the two.
      rows, cols = np.nonzero(pasted)
      if len(rows):  # One axis-aligned box.
        assert len(rows) == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)
      np.testing.assert_allclose(1 - pasted.mean(), float(mixed.lam), atol=1e-6)
    areas.append(float(mixed.lam))
    _check_targets(mixed, labels)
  assert len(set(areas)) > 4


def test_switch_probability_picks_mixup_or_cutmix():
  images, labels, _ = _flat_images()

  def kinds(switch_prob):
    mixing = _mixing(alpha=1.0, cutmix_alpha=1.0, switch_prob=switch_prob)
    out = set()
    for step in range(10):
      w, lam = mixing.pixel_weights(jnp.int32(step), 12, 12)
      w = np.asarray(w)
      out.add("cutmix" if np.all((w == 0) | (w == 1)) and float(lam) < 1 else
              "mixup" if np.ptp(w) == 0 else "other")
    return out

  assert kinds(0.0) == {"mixup"} and kinds(1.0) == {"cutmix"} and kinds(0.5) == {"mixup", "cutmix"}


def test_probability_off_epoch_and_reproducibility():
  images, labels, _ = _flat_images()
  unchanged = images.astype(np.float32)
  never = _mixing(alpha=1.0, prob=0.0)(images, labels, 0, num_shards=1)
  np.testing.assert_array_equal(never.images, unchanged)
  assert float(never.lam) == 1.0
  cfg = get_config().mixup
  cfg.update(alpha=1.0, off_epoch=1.5)
  mixing = mixup.Mixing.from_config(cfg, steps_per_epoch=2, seed=0)
  assert mixing.off_step == 3
  for step in range(6):
    mixed = mixing(images, labels, step, num_shards=1)
    assert (float(mixed.lam) < 1.0) == (step < 3), step
    if step >= 3:
      np.testing.assert_array_equal(mixed.images, unchanged)
  again = mixing(images, labels, 1, num_shards=1)
  np.testing.assert_array_equal(again.images, mixing(images, labels, 1, num_shards=1).images)
  other_seed = mixup.Mixing.from_config(cfg, steps_per_epoch=2, seed=1)
  assert float(other_seed(images, labels, 1, num_shards=1).lam) != float(again.lam)


def test_config_off_and_errors():
  cfg = get_config().mixup
  assert mixup.Mixing.from_config(cfg, steps_per_epoch=1, seed=0) is None  # Off by default.
  for field, value in (("alpha", -1.0), ("prob", 1.5), ("switch_prob", -0.1), ("off_epoch", -1)):
    bad = get_config().mixup
    bad[field] = value
    with pytest.raises(ValueError, match=f"mixup.{field}="):
      mixup.Mixing.from_config(bad, steps_per_epoch=1, seed=0)


def _find_seed(mixup_kw, below_half: bool) -> int:
  """A seed whose first batch is mixed with lam below (or above) one half."""
  for seed in range(100):
    cfg = get_config().mixup
    cfg.update(mixup_kw)
    lam = float(mixup.Mixing.from_config(cfg, steps_per_epoch=1, seed=seed).pixel_weights(
        jnp.int32(0), 8, 8)[1])
    if (lam < 0.5) == below_half and lam < 1.0:
      return seed
  raise AssertionError("no such seed")


def check_train_step_mixes_within_shards(mesh, mixup_kw, n=16):
  """The step's loss and accuracy equal a reference computed from the host mixing with
  one shard per device (accuracy against the dominant label, lam < 0.5: the partner's)."""
  batch = tiny_net.random_batch(n, size=8)
  model = tiny_net.TinyNet(batch_norm=False)
  p = {k: jnp.asarray(v) for k, v in tiny_net.plain_params(model).items()}
  cfg = get_config()
  cfg.mixup.update(mixup_kw)
  cfg.optim.label_smoothing = SMOOTHING
  compiled, state = steps.build(model, cfg.optim, mesh, mean=MEAN, std=STD, steps_per_epoch=1,
                                num_epochs=1, mixup_config=cfg.mixup,
                                seed=_find_seed(mixup_kw, below_half=True))
  _, step_metrics = compiled.train(state, parallel.global_batch(batch, mesh))
  result = step_metrics.compute()

  def expected(num_shards):
    mixed = compiled.mixing(batch["image"], batch["label"], 0, num_shards)
    logits = tiny_net.reference_logits(p, steps.normalize(mixed.images, MEAN, STD))
    targets = mixup.targets(batch["label"], mixed.partner_labels, mixed.lam, logits.shape[-1], SMOOTHING)
    dominant = mixup.dominant_labels(batch["label"], mixed.partner_labels, mixed.lam)
    np.testing.assert_array_equal(dominant, mixed.partner_labels)
    loss = float(optim.soft_cross_entropy(logits, targets).mean())
    return loss, float(np.mean(np.argmax(logits, -1) == dominant)), mixed

  shards = mesh.devices.size
  loss, accuracy, mixed = expected(shards)
  assert float(result["loss"]) == pytest.approx(loss, rel=1e-5)
  assert float(result["accuracy"]) == pytest.approx(accuracy)
  if shards > 1:  # Pairs across the global batch would give another loss.
    assert abs(expected(1)[0] - loss) > 1e-3
  view = compiled.model_view(batch["image"], batch["label"], 0)
  assert view.dtype == np.uint8
  np.testing.assert_array_equal(view, np.clip(np.round(np.asarray(mixed.images)), 0, 255))


@pytest.mark.parametrize("mixup_kw", [dict(alpha=1.0), dict(cutmix_alpha=1.0)])
def test_train_step_mixes_and_counts_the_dominant_label(mixup_kw):
  check_train_step_mixes_within_shards(parallel.create_mesh(jax.devices()[:1]), mixup_kw)
