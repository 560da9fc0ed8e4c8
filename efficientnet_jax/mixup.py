"""Mixup and CutMix, applied inside the jitted train step (config.mixup).

One mixing coefficient (Mixup) or box (CutMix) per batch, drawn from a key derived from
(config.seed, optimizer step): reproducible, and restored with the step on resumption.
Pairs are drawn WITHIN each device's shard of the global batch: example i of a shard is
mixed with the example at the mirrored position of the same shard (timm's flip of a
per-process batch; no data crosses devices). Targets are the label-smoothed one-hot
vectors mixed with the same weight as the pixels, so they sum to one; for CutMix the
weight is the exact share of pixels outside the box. Train accuracy counts the dominant
label: the image's own label when it keeps at least half of the pixels' weight, else its
partner's.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from efficientnet_jax import config_checks, optim
from efficientnet_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Mixed:
  """A mixed batch: float32 pixels in [0, 255], and how its targets mix."""

  images: jax.Array  # [N, H, W, C] float32.
  partner_labels: jax.Array  # [N] the label of the image mixed into it.
  lam: jax.Array  # float32 scalar: the weight of the own label (share of own pixels).


def targets(labels: jax.Array, partner_labels: jax.Array | None, lam: jax.Array | None,
            num_classes: int, label_smoothing: float) -> jax.Array:
  """Soft targets [N, num_classes]: lam * smoothed one-hot(label) + (1 - lam) * smoothed
  one-hot(partner label); the smoothed one-hot alone when lam is None (no mixing)."""
  own = optim.soft_targets(labels, num_classes, label_smoothing)
  if lam is None:
    return own
  return lam * own + (1.0 - lam) * optim.soft_targets(partner_labels, num_classes, label_smoothing)


def dominant_labels(labels: jax.Array, partner_labels: jax.Array, lam: jax.Array) -> jax.Array:
  """The label with the larger share of each mixed target (what train accuracy counts)."""
  return jnp.where(lam >= 0.5, labels, partner_labels)


@dataclasses.dataclass(frozen=True)
class Mixing:
  """Batch mixing of config.mixup; off_step is in optimizer steps (0: never stops)."""

  alpha: float  # Mixup's Beta(alpha, alpha); 0 = no Mixup.
  cutmix_alpha: float  # CutMix's Beta(a, a) for the kept area; 0 = no CutMix.
  prob: float  # Probability that a batch is mixed at all.
  switch_prob: float  # With both on: probability of CutMix rather than Mixup.
  off_step: int  # Mixing stops at this optimizer step.
  seed: int

  @classmethod
  def from_config(cls, cfg: ml_collections.ConfigDict, *, steps_per_epoch: int,
                  seed: int) -> Mixing | None:
    """The mixing of config.mixup, or None when both strengths are 0 (off)."""
    config_checks.require_section("mixup", cfg)
    if cfg.alpha == 0 and cfg.cutmix_alpha == 0:
      return None
    return cls(alpha=float(cfg.alpha), cutmix_alpha=float(cfg.cutmix_alpha), prob=float(cfg.prob),
               switch_prob=float(cfg.switch_prob),
               off_step=int(round(cfg.off_epoch * steps_per_epoch)), seed=int(seed))

  def pixel_weights(self, step: jax.Array, height: int, width: int) -> tuple[jax.Array, jax.Array]:
    """(w [H, W], lam) of `step`: each pixel is w * own + (1 - w) * partner; lam = mean(w).

    Mixup: w = lam everywhere; CutMix: w = 0 inside the box, 1 outside; unmixed: w = 1.
    """
    key = jax.random.fold_in(jax.random.key(self.seed), step)
    k_apply, k_switch, k_lam, k_y, k_x = jax.random.split(key, 5)
    apply = jax.random.uniform(k_apply) < self.prob
    if self.off_step > 0:
      apply &= step < self.off_step
    if self.cutmix_alpha == 0:
      use_cutmix = jnp.bool_(False)
    elif self.alpha == 0:
      use_cutmix = jnp.bool_(True)
    else:
      use_cutmix = jax.random.uniform(k_switch) < self.switch_prob
    alpha = jnp.where(use_cutmix, self.cutmix_alpha, self.alpha)
    drawn = jax.random.beta(k_lam, alpha, alpha)
    # CutMix's box: sides sqrt(1 - drawn) of the image's, centred anywhere, clipped at the
    # borders (the target then follows the box's true area).
    cut = jnp.sqrt(1.0 - drawn)
    half_h = (jnp.floor(cut * height) // 2).astype(jnp.int32)
    half_w = (jnp.floor(cut * width) // 2).astype(jnp.int32)
    cy = jax.random.randint(k_y, (), 0, height)
    cx = jax.random.randint(k_x, (), 0, width)
    rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
    inside = ((rows >= cy - half_h) & (rows < cy + half_h)
              & (cols >= cx - half_w) & (cols < cx + half_w))
    box_weights = jnp.where(inside, 0.0, 1.0)
    weights = jnp.where(use_cutmix, box_weights, jnp.full((height, width), drawn))
    weights = jnp.where(apply, weights, 1.0).astype(jnp.float32)
    lam = jnp.where(use_cutmix, jnp.mean(box_weights), drawn)
    return weights, jnp.where(apply, lam, 1.0).astype(jnp.float32)

  def __call__(self, images: jax.Array, labels: jax.Array, step: jax.Array,
               num_shards: int) -> Mixed:
    """Mixes images [N, H, W, C] (any dtype; float32 out) of `num_shards` equal shards."""
    images = images.astype(jnp.float32)
    weights, lam = self.pixel_weights(step, images.shape[1], images.shape[2])
    w = weights[None, :, :, None]
    mixed = w * images + (1.0 - w) * partners(images, num_shards)
    return Mixed(mixed, partners(labels, num_shards), lam)


def partners(x: jax.Array, num_shards: int) -> jax.Array:
  """Each example's mixing partner: the mirrored position within its shard of x's rows."""
  n = x.shape[0]
  if n % num_shards:
    raise ConfigError(f"A batch of {n} does not split into {num_shards} equal shards.")
  shards = x.reshape(num_shards, n // num_shards, *x.shape[1:])
  return shards[:, ::-1].reshape(x.shape)
