"""A network small enough for hand-written references (and fast compiles) that runs through
steps.build like an EfficientNet: per-image mean colour -> Linear -> [BatchNorm] -> ReLU ->
classifier.

`reference_logits` is the same function written out in jax.numpy on a plain dict of arrays,
`reference_loss` the train step's label-smoothed loss on it, and `adam_first_step` the
optimizer's first update, by hand.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from efficientnet_jax import steps

CLASSES, FEATURES, BN_EPS, BN_MOMENTUM = 4, 8, 1e-5, 0.9


class TinyNet(nnx.Module):

  def __init__(self, batch_norm: bool = True, dtype=jnp.float32, seed: int = 0):
    rngs = nnx.Rngs(seed)
    self.hidden = nnx.Linear(3, FEATURES, dtype=dtype, rngs=rngs)
    self.bn = (nnx.BatchNorm(FEATURES, momentum=BN_MOMENTUM, epsilon=BN_EPS, dtype=dtype, rngs=rngs)
               if batch_norm else None)
    self.classifier = nnx.Linear(FEATURES, CLASSES, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = self.hidden(x.mean(axis=(1, 2)))
    if self.bn is not None:
      h = self.bn(h)
    return self.classifier(jax.nn.relu(h)).astype(jnp.float32)


def plain_params(model: TinyNet) -> dict[str, np.ndarray]:
  """The parameters as a flat {'hidden/kernel': array, ...} dict (float32 numpy)."""
  _, params, _, _ = steps.split_model(model)
  return {"/".join(map(str, path)): np.asarray(v.value, np.float32)
          for path, v in nnx.to_flat_state(params)}


def reference_logits(p: dict[str, jax.Array], x: jax.Array) -> jax.Array:
  """TinyNet in training mode (BatchNorm on the batch's statistics), by hand."""
  h = x.mean(axis=(1, 2)) @ p["hidden/kernel"] + p["hidden/bias"]
  if "bn/scale" in p:
    mean, var = h.mean(0), h.var(0)
    h = (h - mean) / jnp.sqrt(var + BN_EPS) * p["bn/scale"] + p["bn/bias"]
  return jax.nn.relu(h) @ p["classifier/kernel"] + p["classifier/bias"]


def random_batch(n: int, size: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {"image": rng.integers(0, 256, (n, size, size, 3), np.uint8),
          "label": rng.integers(0, CLASSES, (n,), np.int32)}


def reference_loss(p: dict[str, jax.Array], batch: dict[str, np.ndarray], mean, std,
                   smoothing: float) -> jax.Array:
  """Mean label-smoothed cross entropy of TinyNet (training mode) on a uint8 batch."""
  x = (batch["image"].astype(np.float32) / 255 - np.float32(mean)) / np.float32(std)
  targets = (1 - smoothing) * np.eye(CLASSES)[batch["label"]] + smoothing / CLASSES
  logp = jax.nn.log_softmax(reference_logits(p, x))
  return -jnp.mean(jnp.sum(targets * logp, axis=-1))


def adam_first_step(p: dict[str, jax.Array], g: dict[str, jax.Array], lr: float,
                    eps: float) -> dict[str, np.ndarray]:
  """Parameters after Adam's first step from zero state (m_hat = g, v_hat = g^2), no decay."""
  return {k: np.asarray(p[k] - lr * g[k] / (jnp.abs(g[k]) + eps)) for k in p}
