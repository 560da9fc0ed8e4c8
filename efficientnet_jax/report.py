r"""Sweep report: one row per trial, and accuracy plotted against each varied hyperparameter.

  python -m efficientnet_jax.report runs/sweep

A trial is a subfolder holding the config.json that training writes; its results.json (written
at the end of training) gives best validation top-1, test top-1 and epochs. The table (also
saved as RUNS_DIR/report.md) shows only the config fields that differ between trials; one
PNG per such field, RUNS_DIR/plot_<field>.png, shows validation and test top-1 against it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

from absl import app
from PIL import Image, ImageDraw, ImageFont

from efficientnet_jax import cli
from efficientnet_jax.errors import NotFoundError
from efficientnet_jax.summaries import flatten

METRICS = (("val top1", "#1f77b4"), ("test top1", "#ff7f0e"))


@dataclasses.dataclass
class Trial:
  name: str
  config: dict[str, Any]  # Flattened: {'optim.lr': 0.001, ...}.
  results: dict[str, Any] | None  # results.json; None while the trial is unfinished.

  def metrics(self) -> dict[str, float | None]:
    """Best validation top-1 (of the tested checkpoint) and test top-1."""
    if self.results is None:
      return {name: None for name, _ in METRICS}
    return {"val top1": self.results["best_checkpoint"]["val_top1"],
            "test top1": self.results["test"]["top1"]}


def load_trials(runs_dir: str) -> list[Trial]:
  """The trials under `runs_dir` (subfolders with a config.json), by name."""
  if not os.path.isdir(runs_dir):
    raise NotFoundError(f"{runs_dir}: no such folder of runs.")
  trials = []
  for name in sorted(os.listdir(runs_dir)):
    folder = os.path.join(runs_dir, name)
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
      continue
    with open(config_path) as f:
      config = flatten(json.load(f))
    results_path = os.path.join(folder, "results.json")
    results = None
    if os.path.isfile(results_path):
      with open(results_path) as f:
        results = json.load(f)
    trials.append(Trial(name, config, results))
  if not trials:
    raise NotFoundError(f"{runs_dir}: no trial folders (subfolders with config.json); "
                            "pass the --runs_dir of launch/sweep.py.")
  return trials


def varied_fields(trials: Sequence[Trial]) -> list[str]:
  """Config fields whose values are not the same in every trial."""
  keys = sorted({k for t in trials for k in t.config})
  return [k for k in keys if len({json.dumps(t.config.get(k)) for t in trials}) > 1]


def _cell(value: Any) -> str:
  if value is None:
    return "-"
  if isinstance(value, float):
    return f"{value:.4f}" if abs(value) < 1 else f"{value:g}"
  return str(value)


def table(trials: Sequence[Trial], fields: Sequence[str]) -> str:
  """A Markdown table: trial, varied fields, accuracies, epochs, status."""
  header = ["trial", *fields, *(name for name, _ in METRICS), "epochs", "status"]
  rows = []
  for t in trials:
    r = t.results
    status = "running/incomplete" if r is None else ("early stop" if r["stopped_early"] else "done")
    rows.append([t.name, *(_cell(t.config.get(f)) for f in fields),
                 *(_cell(v) for v in t.metrics().values()),
                 _cell(None if r is None else r["epochs"]), status])
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return "\n".join(lines)


def _sort_key(value: Any) -> tuple[int, Any]:
  """Numbers in numeric order, before anything else in text order."""
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    return (0, value)
  return (1, str(value))


def plot(trials: Sequence[Trial], field: str, path: str,
         size: tuple[int, int] = (640, 400)) -> None:
  """PNG of validation and test top-1 of each trial against config `field` (one column per
  distinct value; a line joins the means)."""
  xs = sorted({json.dumps(t.config.get(field)) for t in trials},
              key=lambda v: _sort_key(json.loads(v)))
  points = {name: [(xs.index(json.dumps(t.config.get(field))), t.metrics()[name]) for t in trials
                   if t.metrics()[name] is not None] for name, _ in METRICS}
  values = [y for series in points.values() for _, y in series] or [0.0, 1.0]
  low, high = min(values), max(values)
  pad = max(0.02, 0.1 * (high - low))
  low, high = max(0.0, low - pad), min(1.0, high + pad)

  width, height = size
  left, right, top, bottom = 70, 20, 40, 60
  image = Image.new("RGB", size, "white")
  draw = ImageDraw.Draw(image)
  font = ImageFont.load_default()

  def to_px(i: float, y: float) -> tuple[float, float]:
    x = left + (i + 0.5) / len(xs) * (width - left - right)
    return x, top + (high - y) / (high - low) * (height - top - bottom)

  draw.rectangle([left, top, width - right, height - bottom], outline="black")
  for k in range(5):  # y ticks and grid.
    y = low + k * (high - low) / 4
    _, py = to_px(0, y)
    draw.line([left, py, width - right, py], fill="#dddddd")
    draw.text((left - 45, py - 6), f"{y:.3f}", fill="black", font=font)
  for i, value in enumerate(xs):  # x ticks.
    px, _ = to_px(i, low)
    draw.line([px, height - bottom, px, height - bottom + 5], fill="black")
    draw.text((px - 3 * len(value), height - bottom + 8), value, fill="black", font=font)
  draw.text((width / 2 - 3 * len(field), height - 22), field, fill="black", font=font)
  draw.text((left, 12), f"top-1 accuracy vs {field}", fill="black", font=font)
  for n, (name, color) in enumerate(METRICS):
    lx = width - right - 170 + 85 * n
    draw.ellipse([lx, 14, lx + 8, 22], fill=color)
    draw.text((lx + 12, 12), name, fill="black", font=font)
    series = points[name]
    means = []
    for i in range(len(xs)):
      ys = [y for j, y in series if j == i]
      if ys:
        means.append(to_px(i, sum(ys) / len(ys)))
    if len(means) > 1:
      draw.line(means, fill=color, width=2)
    for i, y in series:
      px, py = to_px(i, y)
      draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=color, outline="black")
  image.save(path)


def write_report(runs_dir: str) -> tuple[str, list[str]]:
  """Writes report.md and one plot per varied field into `runs_dir`; returns (table, PNGs)."""
  trials = load_trials(runs_dir)
  fields = varied_fields(trials)
  text = table(trials, fields)
  with open(os.path.join(runs_dir, "report.md"), "w") as f:
    f.write(f"# Sweep {os.path.abspath(runs_dir)}: {len(trials)} trials\n\n{text}\n")
  pngs = []
  for field in fields:
    path = os.path.join(runs_dir, f"plot_{field}.png")
    plot(trials, field, path)
    pngs.append(path)
  return text, pngs


def main(argv: list[str]) -> None:
  if len(argv) != 2:
    raise app.UsageError("Usage: python -m efficientnet_jax.report RUNS_DIR")
  text, pngs = write_report(argv[1])
  print(text)
  for path in pngs:
    print(f"plot: {path}")


if __name__ == "__main__":
  cli.run(main)
