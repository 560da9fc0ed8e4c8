"""PyTorch state dict -> PortedWeights: every tensor mapped, checked and accounted for."""

from __future__ import annotations

import os

import numpy as np
from flax import nnx

from efficientnet_jax.models import create_model, specs
from efficientnet_jax.weights import keymaps
from efficientnet_jax.weights.checkpoint_files import read_checkpoint
from efficientnet_jax.weights.imagenet_classes import default_class_names
from efficientnet_jax.weights.convention import default_convention, pretraining
from efficientnet_jax.weights.errors import WeightsError
from efficientnet_jax.weights.ported import PortedWeights
from efficientnet_jax.weights.sources import Source, detect_layout, resolve_source

_MAX_LISTED = 12


class ConversionError(WeightsError, ValueError):
  """A checkpoint does not fit the architecture: tensors missing, mis-shaped or unmapped."""


def infer_arch(tensors: dict[str, np.ndarray], layout: str) -> list[str]:
  """The architectures with exactly this state dict's tensor names and stem/head widths."""
  mappable = {k for k in tensors if k.rsplit(".", 1)[-1] not in keymaps.SKIPPED_SUFFIXES}
  matches = []
  for arch in keymaps.layout_archs(layout):
    spec = specs.ARCHS[arch]
    by_target = {m.target: m.source for m in keymaps.tensor_map(arch, layout)}
    if set(by_target.values()) != mappable:
      continue
    if (tensors[by_target["stem/conv/kernel"]].shape[0] == specs.stem_channels(spec)
        and tensors[by_target["head/conv/kernel"]].shape[0] == specs.head_channels(spec)):
      matches.append(arch)
  return matches


def _target_shapes(arch: str, num_classes: int, in_channels: int) -> dict[str, tuple[int, ...]]:
  """Shapes of every tensor of our model's tree (no arrays are allocated)."""
  model = nnx.eval_shape(lambda: create_model(arch, num_classes=num_classes, in_channels=in_channels))
  state = nnx.to_flat_state(nnx.state(model, (nnx.Param, nnx.BatchStat)))
  return {"/".join(map(str, path)): tuple(v.shape) for path, v in state}


def _shape(t: tuple[int, ...]) -> str:
  return "(" + ", ".join(map(str, t)) + ")"


def convert_tensors(tensors: dict[str, np.ndarray], arch: str, source: Source,
                    checkpoint_name: str = "checkpoint") -> PortedWeights:
  """Maps a state dict onto `arch`'s tree; raises ConversionError listing every problem."""
  layout = detect_layout(tensors)
  if layout != source.layout:
    raise ConversionError(f"{checkpoint_name}: the keys are the {layout!r} layout, but source "
                          f"{source.name!r} has the {source.layout!r} layout; pass --source=auto.")
  mappings = keymaps.tensor_map(arch, layout)
  by_target = {m.target: m for m in mappings}
  classifier = tensors.get(by_target["classifier/bias"].source)
  stem = tensors.get(by_target["stem/conv/kernel"].source)
  num_classes = classifier.shape[0] if classifier is not None else 1000
  in_channels = stem.shape[1] if stem is not None and stem.ndim == 4 else 3
  targets = _target_shapes(arch, num_classes, in_channels)
  if targets.keys() != by_target.keys():  # The key map and the model disagree: a bug here.
    raise AssertionError(f"Key map for {arch}/{layout} does not cover the model: "
                         f"{sorted(targets.keys() ^ by_target.keys())[:5]}")

  problems, converted = [], {}
  for m in mappings:
    want = keymaps.TRANSFORMS[m.transform].source_shape(targets[m.target])
    if m.source not in tensors:
      problems.append(f"missing tensor '{m.source}' {_shape(want)} for {m.target}")
      continue
    got = tuple(tensors[m.source].shape)
    if got != want:
      problems.append(f"tensor '{m.source}' has shape {_shape(got)}, expected {_shape(want)} "
                      f"for {m.target} {_shape(targets[m.target])}")
      continue
    converted[m.target] = np.ascontiguousarray(
        keymaps.TRANSFORMS[m.transform].apply(tensors[m.source]), dtype=np.float32)

  mapped = {m.source for m in mappings}
  skipped = {}
  for key in sorted(tensors.keys() - mapped):
    reason = keymaps.SKIPPED_SUFFIXES.get(key.rsplit(".", 1)[-1])
    if reason is None:
      problems.append(f"unmapped tensor '{key}' {_shape(tuple(tensors[key].shape))}")
    else:
      skipped[key] = reason

  if problems:
    raise ConversionError(_problem_report(checkpoint_name, arch, source, problems, tensors))
  trained_on = pretraining(checkpoint_name, num_classes)
  return PortedWeights(
      arch=arch, padding=source.padding, bn_epsilon=source.epsilon(arch),
      convention=default_convention(source.name, arch, trained_on),
      class_names=default_class_names(num_classes), tensors=converted,
      origin={"checkpoint": checkpoint_name, "source": source.name, "pretraining": trained_on,
              "skipped": _summarize(skipped)})


def _summarize(skipped: dict[str, str]) -> dict[str, str]:
  """Skipped tensors grouped by reason: {reason: 'N tensors, e.g. key'}."""
  by_reason: dict[str, list[str]] = {}
  for key, reason in skipped.items():
    by_reason.setdefault(reason, []).append(key)
  return {reason: f"{len(keys)} tensors, e.g. {keys[0]}" for reason, keys in by_reason.items()}


def _problem_report(name: str, arch: str, source: Source, problems: list[str],
                    tensors: dict[str, np.ndarray]) -> str:
  lines = [f"Cannot convert {name} as EfficientNet-{arch} ({source.name}): {len(problems)} problem(s)"]
  lines += [f"  {p}" for p in problems[:_MAX_LISTED]]
  if len(problems) > _MAX_LISTED:
    lines.append(f"  … and {len(problems) - _MAX_LISTED} more")
  candidates = [a for a in infer_arch(tensors, source.layout) if a != arch]
  if candidates:
    lines.append(f"The checkpoint matches arch {candidates[0]}: use it (flag --arch, config "
                 "field model.arch).")
  return "\n".join(lines)


def convert_checkpoint(path: str | os.PathLike, arch: str | None = None,
                       source: str = "auto") -> PortedWeights:
  """Reads and converts a PyTorch checkpoint; `arch=None` infers it from the tensors."""
  path = os.fspath(path)
  tensors = read_checkpoint(path)
  resolved = resolve_source(source, tensors, os.path.basename(path))
  if arch is None:
    candidates = infer_arch(tensors, resolved.layout)
    if len(candidates) != 1:
      raise ConversionError(
          f"{path}: cannot infer the architecture (candidates: {candidates or 'none'}); "
          f"pass --arch (one of {', '.join(specs.ARCHS)}).")
    arch = candidates[0]
  specs.get_arch(arch)
  return convert_tensors(tensors, arch, resolved, checkpoint_name=os.path.basename(path))
