"""Converts a PyTorch EfficientNet checkpoint into our self-describing weights directory.

Usage:
  python -m efficientnet_jax.convert --input=efficientnet-b0-355c32eb.pth --arch=b0 \
      --output=weights/efficientnet-b0

Sources (--source, default auto: from the keys, and for timm's layout the file name):
  timm-tf      timm tf_efficientnet_* (official TF weights; TF 'same' padding, BN eps 1e-3)
  timm         timm native efficientnet_* (symmetric padding, BN eps 1e-5)
  lukemelas    lukemelas efficientnet-pytorch and efficientnet-lite-pytorch (TF 'same')
  torchvision  torchvision efficientnet_b0…b7 (symmetric padding; BN eps 1e-5, b5-b7 1e-3)
--arch is inferred from the tensors when omitted. The output directory holds params.npz
and metadata.json (arch, padding, BN epsilon, input convention, class names); any
--weights / config.pretrained accepts it.
"""

from __future__ import annotations

from efficientnet_jax import cli

cli.quiet_start()

from absl import app, flags  # noqa: E402

from efficientnet_jax.models import ARCHS  # noqa: E402
from efficientnet_jax.weights import (SOURCE_NAMES, PortedWeights, convert_checkpoint,  # noqa: E402
                                      save_weights)

FLAGS = flags.FLAGS


def convert(input_path: str, output: str, *, arch: str | None = None, source: str = "auto") -> PortedWeights:
  """Converts `input_path` and writes the weights directory `output`."""
  weights = convert_checkpoint(input_path, arch=arch, source=source)
  save_weights(weights, output)
  return weights


def describe(weights: PortedWeights) -> str:
  """A few lines saying what was converted and how to feed the network."""
  conv = weights.convention
  lines = [
      f"  arch {weights.arch}, source {weights.origin['source']}, padding {weights.padding}, "
      f"BN eps {weights.bn_epsilon:g}, {len(weights.tensors)} tensors, {weights.num_classes} classes",
      f"  input: {conv.image_size}px, crop {conv.crop_pct}, {conv.interpolation}, values in "
      f"{conv.value_range}, mean {tuple(round(m, 4) for m in conv.mean)}, "
      f"std {tuple(round(s, 4) for s in conv.std)}",
  ]
  lines += [f"  skipped {what}: {reason}" for reason, what in weights.origin["skipped"].items()]
  return "\n".join(lines)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  weights = convert(FLAGS.input, FLAGS.output, arch=FLAGS.arch, source=FLAGS.source)
  print(f"Converted {FLAGS.input} -> {FLAGS.output}\n{describe(weights)}")


def _define_flags() -> None:
  # Defined only when run as a program: --source etc. would clash with other CLIs' flags
  # in a process that imports several of them (tests).
  flags.DEFINE_string("input", None, "PyTorch checkpoint (.pth, .pt, .bin, .safetensors).", required=True)
  flags.DEFINE_string("output", None, "Directory to write params.npz and metadata.json into.", required=True)
  flags.DEFINE_enum("arch", None, list(ARCHS), "Architecture; inferred from the tensors if unset.")
  flags.DEFINE_enum("source", "auto", list(SOURCE_NAMES), "Where the checkpoint comes from (see above).")


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
