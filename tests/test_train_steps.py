"""steps.build on a tiny EfficientNet-B0 (32 px, 4 classes): overfitting, freezing, EMA, masks, bf16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from efficientnet_jax import optim, parallel, steps
from efficientnet_jax.config import get_config
from efficientnet_jax.data.synthetic import synthetic_image
from efficientnet_jax.models import create_model

NUM_CLASSES = 4
SIZE = 32
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _optim_config(**overrides):
  cfg = get_config().optim
  cfg.update(overrides)
  return cfg


def tiny_model(**kw):
  args = dict(num_classes=NUM_CLASSES, depthwise="conv", dropout_rate=0.0, drop_connect_rate=0.0)
  args.update(kw)
  return create_model("b0", **args)


def tiny_data(n_per_class: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  images, labels = [], []
  for label in range(NUM_CLASSES):
    for _ in range(n_per_class):
      image, _ = synthetic_image(rng, label, NUM_CLASSES, (SIZE, SIZE))
      images.append(np.asarray(image))
      labels.append(label)
  return {"image": np.stack(images), "label": np.asarray(labels, np.int32)}


def frozen_bn_models(data, n: int, seed: int = 0):
  """n B0s (weights from `seed`) with frozen BatchNorm whose running statistics are those
  of `data` (at their initial values the activations fade layer after layer)."""
  calibrate = tiny_model(bn_momentum=0.0, seed=seed)
  calibrate.train()
  calibrate(steps.normalize(data["image"], MEAN, STD))  # Running statistics := the batch's.
  weights = nnx.state(calibrate, (nnx.Param, nnx.BatchStat))
  models = [tiny_model(freeze_bn=True) for _ in range(n)]
  for model in models:
    nnx.update(model, weights)
  return models


class Harness:
  """A model's compiled steps (steps.build, as training builds them) on a mesh."""

  def __init__(self, model, optim_cfg, mesh=None, **build_options):
    self.mesh = mesh or parallel.create_mesh()
    self.steps, self.state = steps.build(model, optim_cfg, self.mesh, mean=MEAN, std=STD,
                                         steps_per_epoch=10, num_epochs=10, **build_options)

  def train(self, batch, n: int = 1):
    """n steps on `batch`; their metrics merged."""
    batch = parallel.global_batch(batch, self.mesh)
    total = None
    for _ in range(n):
      self.state, m = self.steps.train(self.state, batch)
      total = m if total is None else total.merge(m)
    return total.compute()

  def evaluate(self, batch, use_ema=False):
    batch = parallel.global_batch(batch, self.mesh)
    return self.steps.evaluate(self.state.variables.weights(use_ema), batch).compute()


@pytest.fixture(scope="module")
def data():
  return tiny_data()


@pytest.fixture(scope="module")
def harness():
  return Harness(tiny_model(), _optim_config(lr=1e-3, weight_decay=0.0))


def _with_mask(batch, n_valid=None):
  n = len(batch["label"])
  mask = np.arange(n) < (n if n_valid is None else n_valid)
  return {**batch, "mask": mask}


def test_tiny_model_overfits_tiny_data(harness, data):
  first = harness.train(data, n=30)
  last = harness.train(data, n=10)
  assert float(last["accuracy"]) >= 0.95, (first, last)
  assert float(last["loss"]) < float(first["loss"])
  assert int(harness.state.step) == 40


def _set_lr_scale(harness, scale):
  # Placed like the rest of the state, so the compiled step is reused.
  harness.state = harness.state.replace(
      lr_scale=parallel.replicate(jnp.asarray(scale, jnp.float32), harness.mesh))


def test_learning_rate_follows_plateau_scale(harness, data):
  _set_lr_scale(harness, 0.1)
  assert float(harness.train(data)["learning_rate"]) == pytest.approx(1e-4)
  _set_lr_scale(harness, 1.0)


def test_eval_ignores_padded_examples(harness, data):
  n_valid = 11
  padded = _with_mask(data, n_valid)
  padded["image"] = padded["image"].copy()
  padded["image"][n_valid:] = 0
  padded["label"] = padded["label"].copy()
  padded["label"][n_valid:] = 0
  result = harness.evaluate(padded)
  # Reference: the same model, eagerly, on the valid examples only.
  model = harness.steps.model(harness.state.variables.weights())
  logits = model(steps.normalize(data["image"][:n_valid], MEAN, STD))
  labels = data["label"][:n_valid]
  expected_loss = optim.cross_entropy_loss(logits, labels, 0.1).mean()
  expected_top1 = np.mean(np.argmax(logits, -1) == labels)
  assert float(result["loss"]) == pytest.approx(float(expected_loss), rel=1e-4)
  assert float(result["top1"]) == pytest.approx(expected_top1)
  confusion = np.asarray(result["confusion"])
  assert confusion.sum() == n_valid
  np.testing.assert_array_equal(confusion.sum(1), np.bincount(labels, minlength=NUM_CLASSES))


def test_freeze_backbone_trains_only_the_classifier_and_ema_averages(data):
  h = Harness(tiny_model(), _optim_config(freeze_backbone=True, ema_decay=0.5))
  before = jax.device_get(h.state)
  h.train(data)
  after = jax.device_get(h.state)
  changed = []
  for (path, b), a in zip(jax.tree_util.tree_flatten_with_path(before.variables.params)[0],
                          jax.tree.leaves(after.variables.params)):
    if path[0].key == "classifier":
      changed.append(not np.array_equal(a, b))
    else:
      np.testing.assert_array_equal(a, b, err_msg=str(path))
  assert changed and all(changed)
  # BN statistics still move (model.freeze_bn controls them), and EMA = (init + new) / 2.
  assert any(not np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(after.variables.batch_stats), jax.tree.leaves(before.variables.batch_stats)))
  for e, b, a in zip(jax.tree.leaves(after.variables.ema.params), jax.tree.leaves(before.variables.params),
                     jax.tree.leaves(after.variables.params)):
    np.testing.assert_allclose(e, 0.5 * b + 0.5 * a, rtol=1e-6, atol=1e-7)
  assert set(h.evaluate(_with_mask(data), use_ema=True)) == {"loss", "top1", "top5", "confusion"}


def test_bfloat16_compute_keeps_float32_params_and_statistics(data):
  h = Harness(tiny_model(dtype="bfloat16"), _optim_config())
  result = h.train(data)
  assert np.isfinite(float(result["loss"]))
  dtypes = {x.dtype for x in jax.tree.leaves(h.state.variables.weights())}
  assert dtypes == {jnp.dtype(jnp.float32)}
