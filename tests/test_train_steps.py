"""steps.py on a tiny EfficientNet-B0 (32 px, 4 classes): overfitting, freezing, EMA, masks, bf16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from efficientnet_jax import optim, parallel, steps
from efficientnet_jax.data.synthetic import synthetic_image
from efficientnet_jax.models import create_model

NUM_CLASSES = 4
SIZE = 32
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _optim_config(**overrides):
  import configs.default  # pylint: disable=g-import-not-at-top

  cfg = configs.default.get_config().optim
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


class Harness:
  """A model's jitted train/eval steps on a mesh over the available devices."""

  def __init__(self, model, optim_cfg, mesh=None):
    self.mesh = mesh or parallel.create_mesh()
    tx = optim.create_optimizer(optim_cfg, steps.split_model(model)[1])
    self.graphdef, state = steps.create_train_state(model, tx, optim_cfg.ema_decay)
    self.state = parallel.replicate(state, self.mesh)
    schedule = optim.learning_rate_schedule(optim_cfg, steps_per_epoch=10, num_epochs=10)
    repl = parallel.replicated(self.mesh)
    self.train_step = jax.jit(
        steps.make_train_step(self.graphdef, tx, schedule, label_smoothing=optim_cfg.label_smoothing,
                              mean=MEAN, std=STD, ema_decay=optim_cfg.ema_decay),
        donate_argnums=0, out_shardings=(repl, repl))
    self.eval_step = jax.jit(steps.make_eval_step(self.graphdef, label_smoothing=0.0, mean=MEAN, std=STD),
                             out_shardings=repl)

  def train(self, batch, n: int = 1):
    """n steps on `batch`; their metrics merged."""
    batch = parallel.global_batch(batch, self.mesh)
    total = None
    for _ in range(n):
      self.state, m = self.train_step(self.state, batch)
      total = m if total is None else total.merge(m)
    return total.compute()

  def evaluate(self, batch, use_ema=False):
    batch = parallel.global_batch(batch, self.mesh)
    return self.eval_step(*steps.variables_of(self.state, use_ema), batch).compute()


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
  model = nnx.merge(harness.graphdef, *steps.variables_of(harness.state))
  model.eval()
  logits = model(steps.normalize(data["image"][:n_valid], MEAN, STD))
  labels = data["label"][:n_valid]
  expected_loss = optim.cross_entropy_loss(logits, labels, 0.0).mean()
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
  for (path, b), a in zip(jax.tree_util.tree_flatten_with_path(before.params)[0],
                          jax.tree.leaves(after.params)):
    if path[0].key == "classifier":
      changed.append(not np.array_equal(a, b))
    else:
      np.testing.assert_array_equal(a, b, err_msg=str(path))
  assert changed and all(changed)
  # BN statistics still move (model.freeze_bn controls them), and EMA = (init + new) / 2.
  assert any(not np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(after.batch_stats), jax.tree.leaves(before.batch_stats)))
  for e, b, a in zip(jax.tree.leaves(after.ema.params), jax.tree.leaves(before.params),
                     jax.tree.leaves(after.params)):
    np.testing.assert_allclose(e, 0.5 * b + 0.5 * a, rtol=1e-6, atol=1e-7)
  assert set(h.evaluate(_with_mask(data), use_ema=True)) == {"loss", "top1", "top5", "confusion"}


def test_bfloat16_compute_keeps_float32_params_and_statistics(data):
  h = Harness(tiny_model(dtype="bfloat16"), _optim_config())
  result = h.train(data)
  assert np.isfinite(float(result["loss"]))
  dtypes = {x.dtype for x in jax.tree.leaves((h.state.params, h.state.batch_stats))}
  assert dtypes == {jnp.dtype(jnp.float32)}
