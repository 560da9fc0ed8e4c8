"""Top-k classes for images: a training run's own classes, or those of converted weights.

Usage:
  python -m efficientnet_jax.predict --workdir=runs/b0 [--checkpoint=best|latest|STEP] [--ema] \
      photos/ 'more/*.jpg' car.png [--tta=flip] [--output=preds.csv|preds.jsonl]
  python -m efficientnet_jax.predict --weights=weights/efficientnet-lite0 cat.jpg dog.jpg

A run's images are prepared exactly as its evaluation prepares them (the eval transform of
its config.data, the whole image: photos have no bounding box), so predicting a run's test
images reproduces its results.json. --weights takes a converted weights directory, a raw
PyTorch checkpoint, a known name (see efficientnet_jax.weights.KNOWN_WEIGHTS) or a run
directory; converted weights prepare images by their own convention (prepare_image).
Folders are searched recursively for images; an unreadable image is reported by name and
the others are still predicted (exit code 1 says some failed).
"""

from __future__ import annotations

from efficientnet_jax import cli

if __name__ == "__main__":
  cli.quiet_start()  # Before JAX is imported.

import concurrent.futures  # noqa: E402
import csv  # noqa: E402
import dataclasses  # noqa: E402
import glob  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Iterator, Sequence  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402
from flax import nnx  # noqa: E402
from PIL import Image  # noqa: E402

from efficientnet_jax import compile_cache, run_model, steps  # noqa: E402
from efficientnet_jax.data import DataError, transforms  # noqa: E402
from efficientnet_jax.models import EfficientNet  # noqa: E402
from efficientnet_jax.weights import InputConvention, create_pretrained, resolve_weights  # noqa: E402
from efficientnet_jax.errors import ConfigError  # noqa: E402

FLAGS = flags.FLAGS
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
OUTPUT_FORMATS = (".csv", ".jsonl")


def crop_image(image: Image.Image, convention: InputConvention) -> np.ndarray:
  """Eval crop of converted weights: resize the short side (resize 'shorter_side') or both
  sides (resize 'square', aspect ratio not kept) to image_size / crop_pct, centre-crop
  image_size. Returns uint8 [H, W, C] (C = len(convention.mean))."""
  image = transforms.convert_mode(image, "RGB" if len(convention.mean) == 3 else "L")
  size = convention.image_size
  short = int(size / convention.crop_pct)
  w, h = image.size
  scale = short / min(w, h)
  new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
  if convention.resize == "square":
    new_w = new_h = max(size, short)
  image = image.resize((new_w, new_h), transforms.RESAMPLING[convention.interpolation])
  left, top = (new_w - size) // 2, (new_h - size) // 2
  return np.asarray(image.crop((left, top, left + size, top + size))).reshape(size, size, -1)


def prepare_image(image: Image.Image, convention: InputConvention) -> np.ndarray:
  """crop_image, normalized: float32 [H, W, C], the network's input."""
  return convention.normalize(crop_image(image, convention))


@dataclasses.dataclass(frozen=True)
class Classifier:
  """A model in evaluation mode with what predicting needs: how to prepare an image file,
  how to normalize it, the class names, and where the weights came from."""

  model: EfficientNet
  convention: InputConvention  # value_range (0, 1): mean/std in units of pixels / 255.
  class_names: tuple[str, ...]
  preprocess: Callable[[str], np.ndarray] | None  # Image file -> uint8 [S, S, C].
  origin: dict[str, Any]  # {'workdir', 'checkpoint', 'step', 'ema'} or {'weights'}.


def _run_preprocess(config_data: Any) -> Callable[[str], np.ndarray]:
  """A run's eval transform applied to an image file (no bounding box)."""
  transform = transforms.EvalTransform(transforms.Options.from_config(config_data))

  def preprocess(path: str) -> np.ndarray:
    with open(path, "rb") as f:
      record = {"image": f.read(), "file_name": path, "bbox": None, "label": 0}
    return transform.map(record)["image"]

  return preprocess


def _weights_preprocess(convention: InputConvention) -> Callable[[str], np.ndarray]:
  def preprocess(path: str) -> np.ndarray:
    with Image.open(path) as image:
      return crop_image(image, convention)

  return preprocess


def load_classifier(*, workdir: str | None = None, weights: str | None = None,
                    checkpoint: str | int = "best", ema: bool = False,
                    depthwise: str | None = None) -> Classifier:
  """The model of a training run (`workdir`, with `checkpoint` and `ema` as for
  run_model.load_trained) or of pretrained `weights` (a spec for resolve_weights; a run
  directory counts as `workdir`). depthwise: the implementation to build with (None: the
  run's or 'auto')."""
  if (workdir is None) == (weights is None):
    raise ConfigError("Pass either --workdir (a training run) or --weights (converted weights).")
  if weights is not None and run_model.is_workdir(weights):
    workdir = weights
  if workdir is not None:
    trained = cli.load_run(workdir, checkpoint, ema=ema, depthwise=depthwise)
    return Classifier(trained.model, trained.convention, trained.class_names,
                      _run_preprocess(run_model.load_config(workdir).data),
                      {"workdir": workdir, "checkpoint": trained.checkpoint, "step": trained.step,
                       "ema": ema})
  ported = resolve_weights(weights)
  model, convention = create_pretrained(ported, depthwise=depthwise or "auto")
  model.eval()
  names = ported.class_names or tuple(f"class {i}" for i in range(ported.num_classes))
  return Classifier(model, convention.in_unit_range(), names, _weights_preprocess(convention),
                    {"weights": weights})


def probabilities_fn(model: EfficientNet, convention: InputConvention,
                     tta: str) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
  """A jitted images uint8 [N, S, S, C] -> (class probabilities [N, classes] under `tta`,
  the top-1 class without test-time augmentation [N]), normalized by `convention` (mean/std
  in units of pixels / 255)."""
  mean, std = convention.mean, convention.std
  steps.check_tta(tta)

  @nnx.jit
  def probabilities(model: EfficientNet, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    views = steps.tta_views(model, steps.normalize(images, mean, std), tta)
    return jax.nn.softmax(steps.combine_views(views)), views[0].argmax(-1)

  def run(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs, plain_top1 = probabilities(model, images)
    return np.asarray(probs), np.asarray(plain_top1)

  return run


@dataclasses.dataclass(frozen=True)
class Prediction:
  path: str
  top: list[tuple[int, float, str]]  # (class index, probability, class name), most likely first.
  plain_top1: int  # The top-1 class without test-time augmentation.

  def to_json(self) -> dict[str, Any]:
    return {"image": self.path, "top_k": [{"label": i, "class": name, "probability": p}
                                          for i, p, name in self.top]}


def expand_inputs(args: Sequence[str]) -> tuple[list[str], list[str]]:
  """(image files, errors) for arguments naming files, folders (searched recursively for
  IMAGE_EXTENSIONS) or glob patterns."""
  paths, errors = [], []
  for arg in args:
    if os.path.isdir(arg):
      found = sorted(os.path.join(root, name) for root, _, names in os.walk(arg)
                     for name in names if name.lower().endswith(IMAGE_EXTENSIONS))
      if not found:
        errors.append(f"{arg}: no images in this folder (looked for {', '.join(IMAGE_EXTENSIONS)}).")
      paths += found
    elif os.path.isfile(arg):
      paths.append(arg)
    elif any(c in arg for c in "*?["):
      found = sorted(p for p in glob.glob(arg, recursive=True) if os.path.isfile(p))
      if not found:
        errors.append(f"{arg}: no file matches this pattern.")
      paths += found
    else:
      errors.append(f"{arg}: no such file or folder.")
  return paths, errors


def _read(classifier: Classifier, path: str) -> np.ndarray | str:
  """The prepared image, or the reason it cannot be read."""
  try:
    return classifier.preprocess(path)
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    # The data pipeline's DataError advises re-preparing a dataset: give PIL's reason only.
    reason = e.__cause__ if isinstance(e, DataError) and e.__cause__ else e
    return f"{path}: cannot read this image ({cli.one_line(reason)}); skipped."


def predict(classifier: Classifier, paths: Sequence[str], *, top_k: int = 5,
            batch_size: int = 32, tta: str = "none") -> Iterator[Prediction | str]:
  """For each path in order, its Prediction or (unreadable image) an error message.

  Images are decoded by a thread pool and predicted in batches of min(batch_size, number of
  images) on the default device, the last batch padded: one compilation.
  """
  forward = probabilities_fn(classifier.model, classifier.convention, tta)
  batch_size = max(1, min(batch_size, len(paths)))
  k = min(top_k, len(classifier.class_names))
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
    for start in range(0, len(paths), batch_size):
      chunk = paths[start:start + batch_size]
      read = list(pool.map(lambda p: _read(classifier, p), chunk))
      ok = [i for i, r in enumerate(read) if not isinstance(r, str)]
      probs = plain = None
      if ok:
        images = np.stack([read[i] for i in ok])
        padding = np.zeros((batch_size - len(ok), *images.shape[1:]), images.dtype)
        probs, plain = forward(np.concatenate([images, padding]))
      row = dict(zip(ok, range(len(ok))))
      for i, path in enumerate(chunk):
        if i not in row:
          yield read[i]
          continue
        p = probs[row[i]]
        order = np.argsort(-p, kind="stable")[:k]
        yield Prediction(path, [(int(c), float(p[c]), classifier.class_names[c]) for c in order],
                         int(plain[row[i]]))


def write_predictions(predictions: Sequence[Prediction], path: str) -> None:
  """preds.csv (one row per image and rank: image, rank, label, class, probability) or
  preds.jsonl (one JSON object per image)."""
  if path.endswith(".jsonl"):
    with open(path, "w") as f:
      for prediction in predictions:
        f.write(json.dumps(prediction.to_json()) + "\n")
    return
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["image", "rank", "label", "class", "probability"])
    for prediction in predictions:
      for rank, (index, prob, name) in enumerate(prediction.top, 1):
        writer.writerow([prediction.path, rank, index, name, f"{prob:.6f}"])


def main(argv: list[str]) -> int:
  if FLAGS.output and not FLAGS.output.endswith(OUTPUT_FORMATS):
    raise ConfigError(f"--output={FLAGS.output}: name a .csv or .jsonl file.")
  if not argv[1:]:
    raise ConfigError("Name at least one image, folder or glob pattern after the flags.")
  paths, errors = expand_inputs(argv[1:])
  compile_cache.enable()
  classifier = load_classifier(workdir=FLAGS.workdir, weights=FLAGS.weights,
                               checkpoint=FLAGS.checkpoint, ema=FLAGS.ema)
  for error in errors:  # After the model loaded: a bad --workdir is the one error then.
    print(f"Error: {error}", file=sys.stderr)
  predictions, failed, changed = [], len(errors), []
  for result in predict(classifier, paths, top_k=FLAGS.top_k, batch_size=FLAGS.batch_size,
                        tta=FLAGS.tta):
    if isinstance(result, str):
      print(f"Error: {result}", file=sys.stderr)
      failed += 1
      continue
    predictions.append(result)
    if result.plain_top1 != result.top[0][0]:
      changed.append(result)
    if not FLAGS.output:
      print(result.path)
      for index, prob, name in result.top:
        print(f"  {prob:6.3f}  {index:4d}  {name}")
  if FLAGS.output:
    write_predictions(predictions, FLAGS.output)
    print(f"Wrote {len(predictions)} predictions to {FLAGS.output}")
  if FLAGS.tta != "none":
    print(f"{FLAGS.tta} TTA changed the top-1 class of {len(changed)} of {len(predictions)} images"
          + "".join(f"\n  {p.path}: {classifier.class_names[p.plain_top1]} -> {p.top[0][2]}"
                    for p in changed))
  if failed:
    print(f"Error: {failed} of {len(paths) + len(errors)} inputs could not be predicted.",
          file=sys.stderr)
    return 1
  return 0


def _define_flags() -> None:
  # Defined only when run as a program (see convert.py).
  cli.define_checkpoint_flags()
  flags.DEFINE_string("weights", None, "Converted weights directory, PyTorch checkpoint, known "
                      "name, or a training run's directory (instead of --workdir).")
  flags.DEFINE_integer("top_k", 5, "How many classes to report per image.")
  flags.DEFINE_integer("batch_size", 32, "Images per forward pass.")
  flags.DEFINE_enum("tta", "none", list(steps.TTA_MODES), "Test-time augmentation: flip "
                    "averages the probabilities of each image and its mirror image.")
  flags.DEFINE_string("output", None, "Also write the predictions to this .csv or .jsonl file.")


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
