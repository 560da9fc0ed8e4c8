r"""Evaluate a training run's checkpoint on a split, with the run's own evaluation.

  python -m efficientnet_jax.evaluate --workdir=runs/b0 [--checkpoint=best|latest|STEP] \
      [--ema] [--split=test|val|train] [--tta=flip] [--config.data.dir=/data/cars]

Every example is counted exactly once on any number of devices, by the eval step training
uses (steps.build, train.evaluate) with the run's config (its config.json; --config.<field>
overrides, e.g. where the data lives). Prints and writes next to the run
<workdir>/eval_<split>[_latest|_step<N>][_ema][_flip].json: top-1, top-5, loss, per-class
accuracy, the hardest classes, the most confused class pairs and the confusion matrix, with
PNGs of the confusion matrix and of misclassified examples. results.json is never touched.
With --tta=flip the metrics without test-time augmentation are computed too and the change
is reported.
"""

from __future__ import annotations

from efficientnet_jax import cli

if __name__ == "__main__":
  cli.quiet_start()  # Before JAX is imported.

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from efficientnet_jax import (compile_cache, data, metrics, parallel, predict, run_model,  # noqa: E402
                              steps, summaries, train)
from efficientnet_jax.errors import ConfigError  # noqa: E402

FLAGS = flags.FLAGS
SPLITS = ("test", "val", "train")
TILE = 160  # Pixels per misclassified example in the grid (images are resized to it).


def most_confused(counts: np.ndarray, class_names: tuple[str, ...], top: int = 10) -> list[dict[str, Any]]:
  """The `top` largest off-diagonal cells of a confusion matrix [true, predicted]."""
  counts = np.asarray(counts)
  support = counts.sum(axis=1)
  off = counts.copy()
  np.fill_diagonal(off, 0)
  pairs = []
  for flat in np.argsort(-off, axis=None, kind="stable")[:top]:
    t, p = divmod(int(flat), len(counts))
    if off[t, p] == 0:
      break
    pairs.append({"true": class_names[t], "predicted": class_names[p], "count": int(off[t, p]),
                  "fraction_of_true": float(off[t, p] / support[t])})
  return pairs


def _metrics(trained: run_model.TrainedModel, config: ml_collections.ConfigDict, split: str,
             tta: str, mesh: jax.sharding.Mesh) -> metrics.EvalMetrics:
  """The run's eval step (with `tta`) over `split`, every example once."""
  compiled, state = steps.build(
      trained.model, config.optim, mesh, mean=trained.convention.mean, std=trained.convention.std,
      steps_per_epoch=1, num_epochs=1, tta=tta)
  return train.evaluate(compiled, state.variables.weights(), config.data, split,
                        config.eval.batch_size)


def misclassified(trained: run_model.TrainedModel, config: ml_collections.ConfigDict, split: str,
                  tta: str, limit: int) -> list[dict[str, Any]]:
  """Up to `limit` misclassified examples of `split`, in order (this process's share):
  {'image': uint8 [S, S, C], 'label', 'predicted', 'probability'}. Stops reading the split
  once `limit` are found."""
  forward = predict.probabilities_fn(trained.model, trained.convention, tta)
  found = []
  if limit <= 0:
    return found
  for batch in data.eval_iterator(config.data, split, global_batch_size=config.eval.batch_size):
    probs, _ = forward(batch["image"])
    predicted = probs.argmax(-1)
    for i in np.flatnonzero(batch["mask"] & (predicted != batch["label"])):
      found.append({"image": batch["image"][i], "label": int(batch["label"][i]),
                    "predicted": int(predicted[i]), "probability": float(probs[i, predicted[i]])})
      if len(found) == limit:
        return found
  return found


def misclassified_grid(examples: list[dict[str, Any]], class_names: tuple[str, ...],
                       columns: int = 6) -> np.ndarray:
  """uint8 RGB mosaic: each example resized to TILE px with its true and predicted names."""
  font = ImageFont.load_default()
  tiles = []
  for example in examples:
    pixels = example["image"]
    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).convert("RGB")
    tile = Image.new("RGB", (TILE, TILE + 28), "white")
    tile.paste(image.resize((TILE, TILE), Image.Resampling.BICUBIC))
    draw = ImageDraw.Draw(tile)
    lines = (f"true: {class_names[example['label']]}",
             f"pred: {class_names[example['predicted']]} {example['probability']:.2f}")
    for row, text in enumerate(lines):
      draw.text((2, TILE + 2 + 13 * row), _fit(draw, text, font, TILE - 4),
                fill=(0, 0, 0) if row == 0 else (170, 0, 0), font=font)
    tiles.append(np.asarray(tile))
  return summaries.image_grid(np.stack(tiles), columns=columns)


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
  """`text`, cut short with '...' to fit `width` pixels."""
  if draw.textlength(text, font=font) <= width:
    return text
  while len(text) > 1 and draw.textlength(text + "...", font=font) > width:
    text = text[:-1]
  return text + "..."


def report_name(split: str, checkpoint: str | int, ema: bool, tta: str) -> str:
  """eval_<split>[_latest|_step<N>][_ema][_<tta>]: one file per evaluated variant."""
  parts = ["eval", split]
  if checkpoint != "best":
    parts.append(checkpoint if checkpoint == "latest" else f"step{checkpoint}")
  parts += ["ema"] if ema else []
  parts += [tta] if tta != "none" else []
  return "_".join(parts)


def _summary(collection: metrics.EvalMetrics) -> dict[str, float]:
  return {k.split("/")[1]: v for k, v in metrics.scalars(collection, "m").items()}


def _training_test_top1(workdir: str, kind: str, split: str, ema: bool) -> float | None:
  """results.json's test top-1 of the best checkpoint, where this evaluation repeats it."""
  path = os.path.join(workdir, "results.json")
  if split != "test" or kind != "best" or not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f).get("test_ema" if ema else "test", {}).get("top1")


def evaluate_run(workdir: str, *, checkpoint: str | int = "best", ema: bool = False,
                 split: str = "test", tta: str | None = None,
                 config: ml_collections.ConfigDict | None = None,
                 num_misclassified: int = 24) -> dict[str, Any]:
  """Evaluates a checkpoint of run `workdir` on `split` and writes the report next to it.

  config: the run's config, possibly overridden (default: its config.json). tta: None =
  the run's config.eval.tta (none for runs from before that field). Returns the
  report written to <workdir>/<report_name>.json, with 'files' listing what was written.
  """
  if split not in SPLITS:
    raise ConfigError(f"--split={split!r}; use one of {SPLITS}.")
  trained = cli.load_run(workdir, checkpoint, ema=ema)
  config = config if config is not None else run_model.load_config(workdir)
  tta = tta if tta is not None else config.eval.get("tta", "none")
  steps.check_tta(tta)
  mesh = parallel.create_mesh()
  parallel.host_batch_size(config.eval.batch_size, mesh, "eval.batch_size")
  collection = _metrics(trained, config, split, tta, mesh)
  counts = np.asarray(jax.device_get(collection.confusion.compute()))
  names = trained.class_names
  report = {
      "workdir": workdir, "split": split,
      "checkpoint": {"kind": trained.checkpoint, "step": trained.step}, "ema": ema, "tta": tta,
      "devices": int(mesh.devices.size), **_summary(collection),
      **metrics.classification_report(counts, names),
      "most_confused": most_confused(counts, names),
  }
  if tta != "none":
    plain = _summary(_metrics(trained, config, split, "none", mesh))
    report["without_tta"] = plain
    report["tta_change"] = {k: report[k] - plain[k] for k in plain}
  training_top1 = _training_test_top1(workdir, trained.checkpoint, split, ema)
  if training_top1 is not None:
    report["results_json_top1"] = training_top1
  report["confusion_matrix"] = counts.tolist()

  stem = os.path.join(workdir, report_name(split, checkpoint, ema, tta))
  files = [stem + ".json", stem + "_confusion.png"]
  if jax.process_index() == 0:
    Image.fromarray(summaries.confusion_image(counts)).save(files[1])
    wrong = misclassified(trained, config, split, tta, num_misclassified)
    if wrong:
      files.append(stem + "_misclassified.png")
      Image.fromarray(misclassified_grid(wrong, names)).save(files[-1])
  report["files"] = files
  summaries.write_json(files[0], report)
  return report


def format_report(report: dict[str, Any]) -> str:
  """The console summary of an evaluate_run report."""
  ckpt = report["checkpoint"]
  lines = [f"{report['workdir']}: {ckpt['kind']} checkpoint (step {ckpt['step']})"
           f"{', EMA weights' if report['ema'] else ''}, {report['split']} split, "
           f"{report['num_examples']} examples, {report['devices']} device(s), TTA {report['tta']}",
           f"top1={report['top1']:.4f} top5={report['top5']:.4f} loss={report['loss']:.4f}"]
  if "without_tta" in report:
    plain, change = report["without_tta"], report["tta_change"]
    lines.append(f"without TTA: top1={plain['top1']:.4f} top5={plain['top5']:.4f} "
                 f"loss={plain['loss']:.4f}; {report['tta']} TTA changed top1 by "
                 f"{change['top1']:+.4f}, top5 by {change['top5']:+.4f}, loss by {change['loss']:+.4f}")
  if "results_json_top1" in report:
    lines.append(f"results.json (the run's own test of this checkpoint): "
                 f"top1={report['results_json_top1']:.4f}")
  lines.append("hardest classes: " + ", ".join(
      f"{c['class']} ({c['accuracy']:.2f})" for c in report["hardest_classes"][:5]))
  if report["most_confused"]:
    lines.append("most confused: " + ", ".join(
        f"{p['true']} -> {p['predicted']} ({p['count']})" for p in report["most_confused"][:5]))
  lines.append("Wrote " + ", ".join(report["files"]))
  return "\n".join(lines)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise ConfigError(f"Unexpected arguments {argv[1:]}; all options are --flags.")
  if not FLAGS.workdir:
    raise ConfigError("--workdir is required: the directory of a training run.")
  compile_cache.enable()
  report = evaluate_run(FLAGS.workdir, checkpoint=FLAGS.checkpoint, ema=FLAGS.ema,
                        split=FLAGS.split, tta=FLAGS.tta, config=FLAGS.config,
                        num_misclassified=FLAGS.num_misclassified)
  print(format_report(report))


def _flag_value(argv: list[str], name: str) -> str | None:
  """The value of --name=VALUE or --name VALUE in argv."""
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      return arg.split("=", 1)[1]
    if arg == f"--{name}" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """Defines --config as the run's own config (so --config.<field> overrides are checked
  against it), then parses the flags."""
  workdir = _flag_value(argv, "workdir")
  config = ml_collections.ConfigDict()
  if workdir and run_model.is_workdir(workdir):
    config = run_model.load_config(workdir)
  elif any(arg.startswith("--config.") for arg in argv):
    sys.exit(f"Error: --workdir={workdir} is not a training run's workdir, so --config.<field> "
             "overrides have no config to apply to.")
  try:  # ml_collections reads the overrides when the flag is defined, and again on parsing.
    config_flags.DEFINE_config_dict("config", config, "The run's config (its config.json).")
    return cli.parse_flags(argv)
  except (AttributeError, KeyError) as e:  # A field the config does not have.
    fields = [a.split("=")[0] for a in argv if a.startswith("--config.")]
    missing = cli.one_line(e).strip("\"'")
    sys.exit(f"Error: {' '.join(fields)}: the run's config has no field {missing!r}; its "
             "config.json lists the fields.")


def _define_flags() -> None:
  cli.define_checkpoint_flags()
  flags.DEFINE_enum("split", "test", list(SPLITS), "The split to evaluate.")
  flags.DEFINE_enum("tta", None, list(steps.TTA_MODES), "Test-time augmentation: flip "
                    "averages the probabilities of each image and its mirror image (default: "
                    "the run's config.eval.tta).")
  flags.DEFINE_integer("num_misclassified", 24, "Misclassified examples in the PNG grid.")


if __name__ == "__main__":
  _define_flags()
  cli.run(main, flags_parser=parse_flags)
