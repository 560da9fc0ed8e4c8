"""Input benchmark: decode + augmentation images/s per core, for each storage, side by side.

  python -m efficientnet_jax.benchmark input [--dir=DIR] [--workers=N] [--image_size=224]
      [--storages=original,reduced,decoded] [--storage_size=0] [--repeats=3]

Without --dir it writes synthetic ~700x480 JPEGs (the typical Stanford Cars size, at a
similar bits per pixel) and prepares them in a temporary folder, once per storage
(efficientnet_jax.data.storage; the disk use and preparation time of each are reported).
For each storage, in alternating rounds (medians reported), it measures:
  1. one core, records already in memory: train and eval transforms, with the time per
     stage of the train transform (decode, warp, colour, array);
  2. the full pipeline (read, transform, batch) with --workers processes: train batches,
     and one evaluation pass (batch / 4) over the held-out half of train; img/s per worker.
Then, on the first storage's records, each train policy of --policies (automatic
augmentation, random erasing), every image through all of them in turn: images per second
of CPU time and the cost per image relative to the first policy.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import itertools
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence

import numpy as np

from efficientnet_jax.config import get_config as default_config
from efficientnet_jax.data import pipeline, preparation, records, synthetic, transforms as T
from efficientnet_jax.data.storage import KINDS


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m efficientnet_jax.benchmark input",
                              description=__doc__.split("\n")[0])
  add_data_args(p, synthetic_images=256)
  p.add_argument("--image_size", type=int, default=224)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--batches", type=int, default=20, help="Timed pipeline batches.")
  p.add_argument("--images", type=int, default=300, help="Timed single-core images.")
  p.add_argument("--storages", default=",".join(KINDS),
                 help=f"Comma-separated storages to compare: {', '.join(KINDS)}.")
  p.add_argument("--storage_size", type=int, default=None,
                 help="config.data.storage_size (default: the config's, 0 = 1.15 x image_size).")
  p.add_argument("--storage_quality", type=int, default=None,
                 help="config.data.storage_quality (default: the config's).")
  p.add_argument("--repeats", type=int, default=3, help="Alternating rounds (medians reported).")
  p.add_argument("--json", default="", help="Also write the results to this file.")
  p.add_argument("--policies", default=",".join(DEFAULT_POLICIES),
                 help="Train policies timed on one core, comma-separated: none, "
                 "randaugment, trivialaugment or autoaugment, each optionally +erasing "
                 f"(erase_prob {ERASE_PROB} unless --set gives one); empty: skip.")
  p.add_argument("--rounds", type=int, default=3, help="Rounds of --images per policy.")
  return p


def add_data_args(p: argparse.ArgumentParser, synthetic_images: int) -> None:
  """The flags data_config reads (besides --image_size)."""
  p.add_argument("--dir", default="", help="Your copy (any layout) or a prepared TFDS "
                 "dir; empty: synthetic 700x480 JPEGs.")
  p.add_argument("--tfds_dir", default="", help="Where prepared data is/goes (default: a "
                 "temporary folder, or --dir when it is prepared).")
  p.add_argument("--workers", type=int, default=os.cpu_count(), help="Grain worker processes.")
  p.add_argument("--synthetic_images", type=int, default=synthetic_images)
  p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                 help="Override a config.data field, e.g. --set train_warp=nearest.")


def data_config(args: argparse.Namespace, workdir: str):
  """config.data for the benchmark: --dir, or synthetic 700x480 JPEGs in `workdir`."""
  config = default_config().data
  if args.dir:
    config.dir = args.dir
    config.tfds_dir = args.tfds_dir or os.path.join(workdir, "tfds")
  else:
    per_class = max(1, args.synthetic_images // 8)
    config.dir = synthetic.make_synthetic_cars(os.path.join(workdir, "raw"), num_classes=8,
                                               per_class_train=per_class, per_class_test=1,
                                               size=(700, 480))
    config.tfds_dir = os.path.join(workdir, "tfds")
  config.image_size = args.image_size
  config.workers = args.workers
  for assignment in args.set:
    field, _, value = assignment.partition("=")
    if field not in config:
      raise SystemExit(f"--set {assignment}: config.data has no field {field!r}.")
    try:
      config[field] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      config[field] = value
  return config


def _staged_train(options: T.Options, record: dict, rng: np.random.Generator,
                  clock: dict[str, float]) -> np.ndarray:
  """TrainTransform.random_map, stage by stage, adding each stage's seconds to `clock`."""
  out = (options.image_size, options.image_size)
  t0 = time.perf_counter()
  image = T.open_image(record["image"])
  area = T.region(image.size, record["bbox"] if options.crop_to_bbox else None,
                  options.bbox_margin)
  geometry = T.sample_geometry(rng, area, options)
  image, box = T.load(image, options.mode, geometry.box, out, options.jpeg_draft)
  t1 = time.perf_counter()
  image = T.warp(image, dataclasses.replace(geometry, box=box), out, options.train_warp,
                 options.fill)
  t2 = time.perf_counter()
  if T.has_colour_jitter(options):
    image = T.apply_colour(image, T.colour_matrix(rng, T.mean_rgb(image), options))
  t3 = time.perf_counter()
  array = T.to_array(image)
  t4 = time.perf_counter()
  for stage, seconds in (("decode", t1 - t0), ("warp", t2 - t1), ("colour", t3 - t2),
                         ("array", t4 - t3)):
    clock[stage] = clock.get(stage, 0.0) + seconds
  return array


def _rate(fn: Callable[[int], object], n: int) -> float:
  fn(0)  # Warm-up.
  start = time.perf_counter()
  for i in range(n):
    fn(i)
  return n / (time.perf_counter() - start)


def single_core(records: Sequence[dict], options: T.Options, n: int) -> dict:
  """Images/s of the train and eval transforms on one core, and the train stage shares."""
  train, evaluate = T.TrainTransform(options), T.EvalTransform(options)
  rec = lambda i: records[i % len(records)]
  check = train.random_map(rec(0), np.random.default_rng(0))["image"]
  if not np.array_equal(check, _staged_train(options, rec(0), np.random.default_rng(0), {})):
    raise AssertionError("_staged_train no longer matches TrainTransform; update it.")
  clock: dict[str, float] = {}
  for i in range(n):
    _staged_train(options, rec(i), np.random.default_rng(i), clock)
  total = sum(clock.values())
  return {
      "train_img_s": _rate(lambda i: train.random_map(rec(i), np.random.default_rng(i)), n),
      "eval_img_s": _rate(lambda i: evaluate.map(rec(i)), n),
      "train_ms_per_stage": {k: 1e3 * v / n for k, v in clock.items()},
      "train_stage_share": {k: v / total for k, v in clock.items()},
  }


def through_pipeline(config, batch: int, batches: int) -> dict:
  """Images/s of the train pipeline, and of one evaluation pass over 'val', with
  config.workers processes (the first batch, which starts the workers, is not timed)."""
  def timed(it, limit: int | None) -> tuple[float, float]:
    try:
      start = time.perf_counter()
      next(it)
      startup, start, images = time.perf_counter() - start, time.perf_counter(), 0
      for b in itertools.islice(it, limit):
        images += int(b["mask"].sum()) if "mask" in b else len(b["label"])
        last = time.perf_counter()  # Not the end of the pass: its workers' exit is slow.
      return startup, images / (last - start)
    finally:
      it.close()

  startup, train = timed(pipeline.train_iterator(config, global_batch_size=batch, seed=0,
                                                 process_index=0, process_count=1), batches)
  _, evaluate = timed(pipeline.eval_iterator(config, "val", global_batch_size=max(1, batch // 4),
                                             process_index=0, process_count=1), None)
  workers = max(pipeline._workers(config), 1)  # pylint: disable=protected-access
  return {"workers": workers, "startup_s": startup, "img_s": train,
          "img_s_per_worker": train / workers, "eval_img_s": evaluate,
          "eval_img_s_per_worker": evaluate / workers}


def prepared(config) -> dict:
  """Prepares config's storage (timed) and returns its dataset folder, size and samples."""
  start = time.perf_counter()
  dataset_dir = preparation.ensure_prepared(config)
  seconds = time.perf_counter() - start
  reader = records.PreparedSource(dataset_dir, "train")
  files = [os.path.join(dataset_dir, f) for f in os.listdir(dataset_dir)]
  images = sum(len(records.split_labels(dataset_dir, s)) for s in ("train", "test"))
  return {"dataset_dir": dataset_dir, "prepare_s": seconds,
          "kb_per_image": sum(map(os.path.getsize, files)) / 1e3 / images,
          "samples": [reader[i] for i in range(min(len(reader), 128))]}


def _median_rounds(rounds: list[dict]) -> dict:
  """Field-wise median of the rounds' nested dicts of numbers."""
  first = rounds[0]
  if isinstance(first, dict):
    return {k: _median_rounds([r[k] for r in rounds]) for k in first}
  return statistics.median(rounds)


DEFAULT_POLICIES = ("none", "randaugment", "trivialaugment", "autoaugment", "none+erasing",
                    "randaugment+erasing")
ERASE_PROB = 0.25  # timm's recipes.


def policy_options(options: T.Options, policy: str) -> T.Options:
  """`options` with the automatic augmentation and erasing of `policy` ('name[+erasing]')."""
  name, _, extra = policy.partition("+")
  if name not in T.augment.POLICIES or extra not in ("", "erasing"):
    raise SystemExit(f"--policies: unknown policy {policy!r}; use one of "
                     f"{', '.join(T.augment.POLICIES)}, optionally +erasing.")
  erase_prob = (options.erase_prob or ERASE_PROB) if extra else 0.0
  return dataclasses.replace(options, auto_augment=name, erase_prob=erase_prob)


def policy_rates(records: Sequence[dict], options: T.Options, policies: Sequence[str], n: int,
                 rounds: int) -> dict:
  """Train images per second of CPU time (this thread's: immune to other processes sharing
  the core) of each policy, and its time per image relative to the first policy's: medians
  and min-max over `rounds` rounds of `n` images. Each image goes through every policy in
  turn (rotating the order), so all see the same records, seeds and machine load."""
  transforms = [T.TrainTransform(policy_options(options, p)) for p in policies]
  seconds = np.zeros((rounds, len(policies)))
  for r in range(rounds):
    for i in range(n):
      for k in np.roll(np.arange(len(policies)), i):
        start = time.thread_time()
        transforms[k].random_map(records[i % len(records)], np.random.default_rng(i))
        seconds[r, k] += time.thread_time() - start
  result = {}
  for k, policy in enumerate(policies):
    rates, cost = n / seconds[:, k], seconds[:, k] / seconds[:, 0]
    result[policy] = {"img_s": float(np.median(rates)),
                      "img_s_range": (float(rates.min()), float(rates.max())),
                      "relative_cost": float(np.median(cost)),
                      "relative_cost_range": (float(cost.min()), float(cost.max()))}
  return result


def main(argv: Sequence[str] | None = None) -> None:
  args = _parser().parse_args(argv)
  policies = [p for p in args.policies.split(",") if p]
  for policy in policies:
    policy_options(T.Options(), policy)  # Checks the names before anything is prepared.
  kinds = args.storages.split(",")
  if unknown := [k for k in kinds if k not in KINDS]:
    raise SystemExit(f"--storages: unknown {unknown}; choose from {KINDS}.")
  with tempfile.TemporaryDirectory() as workdir:
    base = data_config(args, workdir)
    base.val_fraction = 0.5  # Evaluation passes over the held-out half of train.
    configs, info = {}, {}
    for kind in kinds:
      configs[kind] = config = base.copy_and_resolve_references()
      config.storage = kind
      for field in ("storage_size", "storage_quality"):
        if getattr(args, field) is not None:
          config[field] = getattr(args, field)
      info[kind] = prepared(config)
    rounds: dict[str, list[dict]] = {kind: [] for kind in kinds}
    for _ in range(args.repeats):
      for kind, config in configs.items():
        options = dataclasses.replace(T.Options.from_config(config), auto_augment="none",
                                      erase_prob=0.0)
        rounds[kind].append({
            "single_core": single_core(info[kind]["samples"], options, args.images),
            "pipeline": through_pipeline(config, args.batch, args.batches)})
    first = kinds[0]
    policy_result = policy_rates(info[first]["samples"], T.Options.from_config(configs[first]),
                                 policies, args.images, args.rounds) if policies else {}
  result = {"image_size": args.image_size, "repeats": args.repeats, "storages": {
      kind: {"storage": preparation.stored_as(info[kind]["dataset_dir"]).describe(),
             **{k: v for k, v in info[kind].items() if k != "samples"},
             **_median_rounds(rounds[kind])} for kind in kinds}, "policies": policy_result}
  print(format_result(result))
  if policies:
    print(f"train policies ({first} storage), img/s of one core's CPU time, {args.rounds} "
          f"rounds of {args.images} images, each through every policy (median, min-max); cost "
          f"per image relative to {policies[0]}:")
  for policy, r in policy_result.items():
    print(f"  {policy:22s} {r['img_s']:6.0f} img/s ({r['img_s_range'][0]:.0f}-"
          f"{r['img_s_range'][1]:.0f})   x{r['relative_cost']:.2f} "
          f"({r['relative_cost_range'][0]:.2f}-{r['relative_cost_range'][1]:.2f})")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=2)


def format_result(result: dict) -> str:
  """The printed report: one row per storage, ratios against the first storage."""
  storages = result["storages"]
  ref = next(iter(storages.values()))
  workers = int(ref["pipeline"]["workers"])
  header = (f"{'storage':<56}{'kB/img':>7}{'prep s':>7} | one core img/s: {'train':>6}"
            f"{'eval':>7}{'train x':>8}{'eval x':>7} | per worker ({workers}): "
            f"{'train':>6}{'eval':>7}")
  lines = [f"output {result['image_size']}x{result['image_size']}, medians of "
           f"{result['repeats']} alternating rounds; x = against {next(iter(storages))}",
           header, "-" * len(header)]
  for s in storages.values():
    core, pipe = s["single_core"], s["pipeline"]
    ratio = lambda key: core[key] / ref["single_core"][key]
    lines.append(
        f"{s['storage']:<56}{s['kb_per_image']:>7.1f}{s['prepare_s']:>7.1f} | "
        f"{'':>15}{core['train_img_s']:>7.0f}{core['eval_img_s']:>7.0f}"
        f"{ratio('train_img_s'):>8.2f}{ratio('eval_img_s'):>7.2f} | {'':>15}"
        f"{pipe['img_s_per_worker']:>7.0f}{pipe['eval_img_s_per_worker']:>7.0f}")
  lines.append("train ms/image by stage (one core):")
  for kind, s in storages.items():
    core = s["single_core"]
    lines.append(f"  {kind:<9}" + ", ".join(
        f"{k} {v:.2f} ({100 * core['train_stage_share'][k]:.0f}%)"
        for k, v in core["train_ms_per_stage"].items()))
  return "\n".join(lines)


if __name__ == "__main__":
  main()
