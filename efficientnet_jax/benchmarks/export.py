"""Export benchmark: time and artifact size of each export format, each artifact verified.

  python -m efficientnet_jax.benchmark export [--arch=b0] [--res=224] [--num_classes=1000] \
      [--weights=SPEC] [--formats=weights,stablehlo,savedmodel,tflite,onnx]

Exports one model (freshly initialized, or --weights: converted weights / a known name / a
run directory) in each format into a temporary folder with efficientnet_jax.export, then
runs each artifact with its own runtime on probe images and compares its logits with the
JAX model's. Export time covers tracing, conversion and writing (not verification).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
from collections.abc import Sequence

from efficientnet_jax import cli


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m efficientnet_jax.benchmark export",
                              description=__doc__.split("\n")[0])
  p.add_argument("--arch", default="b0")
  p.add_argument("--res", type=int, default=0, help="Input size (default: the arch's, or the "
                 "weights').")
  p.add_argument("--num_classes", type=int, default=1000)
  p.add_argument("--weights", default="", help="Export these weights instead of a fresh model.")
  p.add_argument("--formats", default="weights,stablehlo,savedmodel,tflite,onnx")
  return p


def main(argv: Sequence[str] | None = None) -> None:
  args = _parser().parse_args(argv)
  cli.quiet_start()
  from efficientnet_jax import export, predict  # pylint: disable=g-import-not-at-top
  from efficientnet_jax.models import create_model, get_arch  # pylint: disable=g-import-not-at-top
  from efficientnet_jax.weights import InputConvention  # pylint: disable=g-import-not-at-top
  from efficientnet_jax.weights.convention import IMAGENET_MEAN, IMAGENET_STD  # pylint: disable=g-import-not-at-top

  if args.weights:
    classifier = predict.load_classifier(weights=args.weights, depthwise="conv")
    what = args.weights
  else:
    model = create_model(args.arch, num_classes=args.num_classes, depthwise="conv")
    model.eval()
    convention = InputConvention(IMAGENET_MEAN, IMAGENET_STD, image_size=get_arch(args.arch).resolution)
    classifier = predict.Classifier(model, convention, tuple(f"class {i}" for i in range(args.num_classes)),
                                    preprocess=None, origin={"fresh": args.arch})
    what = "freshly initialized"
  if args.res:
    classifier = dataclasses.replace(
        classifier, convention=dataclasses.replace(classifier.convention, image_size=args.res))
  options, size = classifier.model.options, classifier.convention.image_size
  print(f"{options.arch} {size}x{size}, {options.num_classes} classes, {options.dtype}, {what} "
        "(depthwise=conv)")
  print(f"{'format':<11} {'export s':>8} {'size MB':>8}  {'verified with':<28} max |dlogit| vs JAX")
  with tempfile.TemporaryDirectory() as root:
    for fmt in args.formats.split(","):
      meta = export.export(classifier, fmt, os.path.join(root, fmt))
      check = meta["verification"]
      print(f"{fmt:<11} {meta['export_seconds']:8.1f} {meta['size_bytes'] / 1e6:8.1f}  "
            f"{check['runtime']:<28} {check['max_abs_logit_diff']:.2g}")


if __name__ == "__main__":
  main()
