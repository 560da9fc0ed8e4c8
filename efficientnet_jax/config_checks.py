"""Range checks of every config field (efficientnet_jax/config.py), run before any work.

`validate(config)` raises one ConfigError listing every bad field, one line each, so a run
never prepares data or compiles only to fail on a value that could not work. The modules
that take a config section directly (mixup, distill, optim, steps) check it with the same
rules: `require_section("mixup", config.mixup)`, `require_value("optim.layer_decay", v)`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import ml_collections

from efficientnet_jax.errors import ConfigError, UserError

Check = Callable[[Any], bool]


@dataclasses.dataclass(frozen=True)
class Rule:
  field: str  # Dotted path under config, e.g. "optim.lr".
  ok: Check
  requirement: str  # Completes "must be ...".


def _at_least(low: float) -> Check:
  return lambda v: v >= low


def _greater(low: float) -> Check:
  return lambda v: v > low


def _in(low: float, high: float, closed_high: bool = False) -> Check:
  return lambda v: low <= v <= high if closed_high else low <= v < high


def _choice(*allowed: Any) -> tuple[Check, str]:
  return (lambda v: v in allowed), f"one of {allowed}"


def _range_pair(low: float, high: float | None = None) -> Check:
  """A (lo, hi) pair with low < lo <= hi (<= high)."""
  def ok(v):
    return len(v) == 2 and low < v[0] <= v[1] and (high is None or v[1] <= high)
  return ok


def _ramp(low: float, high: float | None = None) -> Check:
  """() (no ramp), or a (first, last) pair of values in [low, high] (high: inclusive)."""
  def ok(v):
    return len(v) == 0 or (len(v) == 2 and all(low <= x and (high is None or x <= high) for x in v))
  return ok


def _rules() -> list[Rule]:
  from efficientnet_jax.data import splits, verify  # pylint: disable=g-import-not-at-top
  from efficientnet_jax.run_model import INPUT_CONVENTIONS  # pylint: disable=g-import-not-at-top
  from efficientnet_jax.steps import TTA_MODES  # pylint: disable=g-import-not-at-top

  return [
      Rule("seed", _at_least(0), ">= 0"),
      Rule("data.tfds_dir", bool, "a folder (not empty)"),
      Rule("data.bad_images", *_choice(*verify.BAD_IMAGE_POLICIES)),
      Rule("data.prepare_threads", _at_least(0), ">= 0 (0 = all cores)"),
      Rule("data.val_split", *_choice(*splits.VAL_SPLITS)),
      Rule("data.val_fraction", _in(0.0, 1.0), "in [0, 1)"),
      Rule("data.split_seed", _at_least(0), ">= 0"),
      Rule("data.image_size", _at_least(8), ">= 8 pixels"),
      Rule("data.channels", *_choice(1, 3)),
      Rule("data.bbox_margin", _at_least(0.0), ">= 0"),
      Rule("data.rrc_scale", _range_pair(0.0, 1.0), "(lo, hi) with 0 < lo <= hi <= 1"),
      Rule("data.rrc_ratio", _range_pair(0.0), "(lo, hi) with 0 < lo <= hi"),
      Rule("data.hflip", _in(0.0, 1.0, closed_high=True), "a probability in [0, 1]"),
      Rule("data.rotate", _in(0.0, 180.0, closed_high=True), "degrees in [0, 180]"),
      Rule("data.translate", _in(0.0, 1.0, closed_high=True), "a fraction in [0, 1]"),
      Rule("data.scale", _range_pair(0.0), "(lo, hi) with 0 < lo <= hi"),
      Rule("data.shear", _in(0.0, 89.0, closed_high=True), "degrees in [0, 89]"),
      Rule("data.fill", _in(0, 255, closed_high=True), "a pixel value in [0, 255]"),
      Rule("data.brightness", _in(0.0, 1.0, closed_high=True), "in [0, 1]"),
      Rule("data.contrast", _in(0.0, 1.0, closed_high=True), "in [0, 1]"),
      Rule("data.saturation", _in(0.0, 1.0, closed_high=True), "in [0, 1]"),
      Rule("data.hue", _in(0.0, 0.5, closed_high=True), "in [0, 0.5] of a turn"),
      Rule("data.std", lambda v: all(s > 0 for s in v), "positive"),
      Rule("data.gray_std", lambda v: all(s > 0 for s in v), "positive"),
      Rule("data.workers", _at_least(-1), ">= 0, or -1 (one per core)"),
      Rule("data.worker_buffer_size", _at_least(1), ">= 1"),
      Rule("data.read_threads", _at_least(0), ">= 0"),
      Rule("data.prefetch_buffer_size", _at_least(0), ">= 0"),
      Rule("optim.lr", _greater(0.0), "> 0"),
      Rule("optim.weight_decay", _at_least(0.0), ">= 0"),
      Rule("optim.b1", _in(0.0, 1.0), "in [0, 1)"),
      Rule("optim.b2", _in(0.0, 1.0), "in [0, 1)"),
      Rule("optim.eps", _greater(0.0), "> 0"),
      Rule("optim.label_smoothing", _in(0.0, 1.0), "in [0, 1)"),
      Rule("optim.grad_clip_norm", _at_least(0.0), ">= 0 (0 = no clipping)"),
      Rule("optim.schedule", *_choice("constant", "warmup_cosine")),
      Rule("optim.warmup_epochs", _at_least(0.0), ">= 0"),
      Rule("optim.cosine_end_lr", _at_least(0.0), ">= 0"),
      Rule("optim.ema_decay", _in(0.0, 1.0), "in [0, 1) (0 = off)"),
      Rule("optim.plateau.factor", lambda v: 0.0 < v < 1.0, "in (0, 1)"),
      Rule("optim.plateau.patience", _at_least(0), ">= 0"),
      Rule("optim.plateau.threshold", _at_least(0.0), ">= 0"),
      Rule("optim.plateau.cooldown", _at_least(0), ">= 0"),
      Rule("optim.plateau.min_lr", _at_least(0.0), ">= 0"),
      Rule("optim.early_stopping.patience", _at_least(1), ">= 1"),
      Rule("optim.early_stopping.min_delta", _at_least(0.0), ">= 0"),
      Rule("optim.layer_decay", lambda v: 0.0 < v <= 1.0, "in (0, 1] (1 = off)"),
      Rule("optim.sam_rho", _at_least(0.0), ">= 0 (0 = off)"),
      Rule("train.accumulate_steps", _at_least(1), ">= 1"),
      Rule("mixup.alpha", _at_least(0.0), ">= 0 (0 = no Mixup)"),
      Rule("mixup.cutmix_alpha", _at_least(0.0), ">= 0 (0 = no CutMix)"),
      Rule("mixup.prob", _in(0.0, 1.0, closed_high=True), "a probability in [0, 1]"),
      Rule("mixup.switch_prob", _in(0.0, 1.0, closed_high=True), "a probability in [0, 1]"),
      Rule("mixup.off_epoch", _at_least(0.0), ">= 0 (0 = never)"),
      Rule("progressive.stages", _at_least(0), ">= 0 (0 or 1 = off)"),
      Rule("progressive.min_image_size", _at_least(8), ">= 8 pixels"),
      Rule("progressive.size_multiple", _at_least(1), ">= 1"),
      Rule("progressive.dropout_rate", _ramp(0.0, 0.99), "() or (first, last) in [0, 0.99]"),
      Rule("progressive.ra_magnitude", _ramp(0.0, 10.0), "() or (first, last) in [0, 10]"),
      Rule("progressive.mixup_alpha", _ramp(0.0), "() or (first, last) >= 0"),
      Rule("progressive.cutmix_alpha", _ramp(0.0), "() or (first, last) >= 0"),
      Rule("distill.alpha", _in(0.0, 1.0, closed_high=True), "in [0, 1]"),
      Rule("distill.temperature", _greater(0.0), "> 0"),
      Rule("distill.image_size", _at_least(0), ">= 0 (0 = the teacher's own)"),
      Rule("train.num_epochs", _at_least(1), ">= 1"),
      Rule("train.batch_size", _at_least(1), ">= 1"),
      Rule("train.eval_every_epochs", _at_least(1), ">= 1"),
      Rule("train.log_every_steps", _at_least(1), ">= 1"),
      Rule("train.num_sample_images", _at_least(0), ">= 0"),
      Rule("train.stop_at_step", lambda v: v == -1 or v >= 1, ">= 1, or -1 (never)"),
      Rule("train.input_convention", *_choice(*INPUT_CONVENTIONS)),
      Rule("checkpoint.every_steps", _at_least(1), ">= 1"),
      Rule("checkpoint.keep_latest", _at_least(1), ">= 1 (a run resumes from them)"),
      Rule("checkpoint.keep_best", _at_least(1), ">= 1 (the final test reads it)"),
      Rule("eval.batch_size", _at_least(1), ">= 1"),
      Rule("eval.tta", *_choice(*TTA_MODES)),
  ]


def _get(config: ml_collections.ConfigDict, field: str) -> Any:
  node = config
  for part in field.split("."):
    node = node[part]
  return node


def _broken(rule: Rule, value: Any) -> str | None:
  """The line for `value` of rule.field when it breaks the rule, else None."""
  try:
    ok = rule.ok(value)
  except TypeError:
    ok = False
  return None if ok else f"config.{rule.field}={value!r} must be {rule.requirement}."


def _raise_if(found: list[str]) -> None:
  if len(found) == 1:
    raise ConfigError(found[0])
  if found:
    raise ConfigError(f"{len(found)} bad config value(s):\n  " + "\n  ".join(found))


def require_section(section: str, cfg: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming every bad field of config.<section> (given as `cfg`)."""
  prefix = section + "."
  _raise_if([line for rule in _rules() if rule.field.startswith(prefix)
             for line in [_broken(rule, _get(cfg, rule.field[len(prefix):]))] if line])


def require_value(field: str, value: Any) -> None:
  """Raises ConfigError when `value` breaks the rule of config.<field>."""
  rule = next(r for r in _rules() if r.field == field)
  _raise_if([line] if (line := _broken(rule, value)) else [])


def problems(config: ml_collections.ConfigDict) -> list[str]:
  """One line per field whose value cannot work (empty when all are fine)."""
  from efficientnet_jax.data import pipeline, storage, transforms  # pylint: disable=g-import-not-at-top
  from efficientnet_jax import progressive  # pylint: disable=g-import-not-at-top
  from efficientnet_jax.run_model import model_options  # pylint: disable=g-import-not-at-top

  found = [line for rule in _rules() if (line := _broken(rule, _get(config, rule.field)))]
  if config.model.in_channels != config.data.channels:
    found.append(f"config.model.in_channels={config.model.in_channels} but config.data.channels="
                 f"{config.data.channels}: set both to 3 (RGB) or both to 1 (grayscale).")
  for check in (lambda: model_options(config), lambda: transforms.Options.from_config(config.data),
                lambda: pipeline.normalization(config.data),
                lambda: storage.Storage.from_config(config.data),
                lambda: progressive.check(config)):
    try:
      check()
    except UserError as e:
      found.append(str(e))
  return found


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming every field (one line each) whose value cannot work."""
  found = problems(config)
  if found:  # Always the count line first, even for one value.
    raise ConfigError(f"{len(found)} bad config value(s):\n  " + "\n  ".join(found))
