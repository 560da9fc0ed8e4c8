"""End-to-end benchmark: the train step fed by the real Grain pipeline vs an on-device batch.

  python -m efficientnet_jax.benchmark e2e [--arch=b0] [--batch=64] [--res=224]
      [--dir=DIR] [--workers=N] [--steps=10] [--repeats=3] [--dtype=bfloat16] [--feature=mixup]

Both feeds use the same compiled step (benchmarks.step.JaxSteps). "synthetic" feeds one
fixed batch already on the device; "pipeline" feeds batches from data.train_iterator
(read, decode, augment in --workers processes, then host -> device), overlapping with
the asynchronously dispatched step. The two alternate for --repeats rounds and their
medians are compared. One pipeline serves every round; its workers stop once their few
batches are ready, so they idle through synthetic rounds (their CPU use in both kinds of
round is reported, on Linux). A ratio pipeline/synthetic below ~0.95 means the step waits
for input or, on a CPU-only host, shares its cores with the workers.
Without --dir it writes ~700x480 JPEGs (as `input`).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from efficientnet_jax.benchmarks import input as input_benchmark
from efficientnet_jax.benchmarks.step import JaxSteps, model_parser


def _parser() -> argparse.ArgumentParser:
  p = model_parser("e2e", __doc__)
  p.add_argument("--steps", type=int, default=10, help="Timed steps per round.")
  p.add_argument("--warmup", type=int, default=3, help="Untimed steps before each round.")
  p.add_argument("--repeats", type=int, default=3,
                 help="Rounds of each feed, alternating (median, min-max reported).")
  p.add_argument("--feature", default="", help="A train-step option in both feeds, as in "
                 "benchmark step: mixup (Mixup/CutMix), sam, accumulate=K, distill=ARCH.")
  input_benchmark.add_data_args(p, synthetic_images=512)
  p.add_argument("--json", default="", help="Also write the results to this file.")
  return p


def children_cpu_seconds() -> float | None:
  """User + system CPU seconds of this process's live child processes (None off Linux)."""
  me, total = os.getpid(), 0
  try:
    pids = [p for p in os.listdir("/proc") if p.isdigit()]
  except OSError:
    return None
  for pid in pids:
    try:
      with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    except OSError:  # Gone meanwhile, or not readable.
      continue
    if int(fields[1]) == me:  # Fields after the name: state, ppid, ..., utime (12), stime (13).
      total += int(fields[11]) + int(fields[12])
  return total / os.sysconf("SC_CLK_TCK")


def _timed_round(run_step: Callable[[], Any], steps: int,
                 warmup: int) -> tuple[float, float | None]:
  """(seconds, CPU seconds of child processes or None) of `steps` steps after `warmup`."""
  import jax

  for _ in range(warmup):
    jax.block_until_ready(run_step())
  cpu, start = children_cpu_seconds(), time.perf_counter()
  for _ in range(steps):
    result = run_step()
  jax.block_until_ready(result)
  seconds, cpu_end = time.perf_counter() - start, children_cpu_seconds()
  return seconds, None if cpu is None or cpu_end is None else cpu_end - cpu


def _spread(rates: list[float]) -> dict[str, Any]:
  return dict(median=statistics.median(rates), min=min(rates), max=max(rates), rounds=rates)


def main(argv: Sequence[str] | None = None) -> None:

  from efficientnet_jax import parallel
  from efficientnet_jax.data import pipeline, preparation
  from efficientnet_jax.models import get_arch

  args = _parser().parse_args(argv)
  args.res = args.res or get_arch(args.arch).resolution
  args.image_size = args.res  # The names input_benchmark.data_config reads.
  with tempfile.TemporaryDirectory() as workdir:
    config = input_benchmark.data_config(args, workdir)
    preparation.ensure_prepared(config)
    bench = JaxSteps(args.arch, args.batch, args.res, args.dtype, args.depthwise, remat=False,
                     channels=config.channels, feature=args.feature)
    it = pipeline.train_iterator(config, global_batch_size=args.batch, seed=0, process_index=0,
                                 process_count=1)
    feeds = {"synthetic": bench.train,
             "pipeline": lambda: bench.train(parallel.global_batch(next(it), bench.mesh))}
    rates, cores = {name: [] for name in feeds}, {name: [] for name in feeds}
    try:
      for _ in range(args.repeats):
        for name, run_step in feeds.items():
          seconds, cpu = _timed_round(run_step, args.steps, args.warmup)
          rates[name].append(args.batch * args.steps / seconds)
          cores[name].append(None if cpu is None else cpu / seconds)
    finally:
      it.close()  # Its workers and their shared memory; batches still held by reference
      feeds.clear()  # cycles would outlive the run (the resource tracker's warning), so
      gc.collect()  # collect them now, as the trainer does.
  measured = all(c is not None for v in cores.values() for c in v)
  result = dict(arch=args.arch, res=args.res, batch=args.batch, dtype=args.dtype,
                device=bench.device.device_kind, workers=config.workers, name=bench.name,
                steps=args.steps, **{name: _spread(r) for name, r in rates.items()},
                **{f"{name}_img_s": statistics.median(r) for name, r in rates.items()},
                host_cores=os.cpu_count(),
                worker_cores={name: statistics.median(c) for name, c in cores.items()}
                if measured else None)
  result["ratio"] = result["pipeline_img_s"] / result["synthetic_img_s"]
  print(format_result(result))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=2)


def format_result(r: dict[str, Any]) -> str:
  """The benchmark's printed report."""
  rounds = len(r["synthetic"]["rounds"])
  lines = [f"{r['arch']} {r['res']}x{r['res']} batch {r['batch']} {r['dtype']} on {r['device']} "
           f"({r['name']}), {r['workers']} input workers, {rounds} alternating rounds of "
           f"{r['steps']} steps"]
  for label, key in (("synthetic on-device batch", "synthetic"), ("Grain pipeline", "pipeline")):
    s = r[key]
    lines.append(f"{label:<26}{s['median']:9.1f} img/s ({s['min']:.1f}-{s['max']:.1f})")
  lines[-1] += f"   ratio {r['ratio']:.2f}"
  if r["worker_cores"] is not None:
    lines.append(f"input workers used {r['worker_cores']['pipeline']:.2f} of {r['host_cores']} "
                 f"host cores while feeding the step, {r['worker_cores']['synthetic']:.2f} "
                 "during synthetic rounds")
  return "\n".join(lines)


if __name__ == "__main__":
  main()
