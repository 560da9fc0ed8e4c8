"""End-to-end benchmark: the train step fed by the real Grain pipeline vs an on-device batch.

  python -m efficientnet_jax.benchmark e2e [--arch=b0] [--batch=64] [--res=224]
      [--data_dir=DIR] [--workers=N] [--steps=20] [--dtype=bfloat16]

Both runs use the same compiled step (benchmarks.step.JaxSteps). "synthetic" feeds one
fixed batch already on the device; "pipeline" feeds batches from data.train_iterator
(read, decode, augment in --workers processes, then host -> device), overlapping with
the asynchronously dispatched step. A ratio pipeline/synthetic below ~0.95 means the
accelerator waits for input. Without --data_dir it writes ~700x480 JPEGs (as `input`).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence

from efficientnet_jax.benchmarks import input as input_benchmark
from efficientnet_jax.benchmarks.step import JaxSteps, add_model_args


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m efficientnet_jax.benchmark e2e",
                              description=__doc__.split("\n")[0])
  add_model_args(p, depthwise_help="auto, conv, shifted or native.")
  p.add_argument("--steps", type=int, default=20, help="Timed steps per run.")
  p.add_argument("--warmup", type=int, default=3, help="Untimed steps before each run.")
  input_benchmark.add_data_args(p, synthetic_images=512)
  p.add_argument("--json", default="", help="Also write the results to this file.")
  return p


def _images_per_second(run_step, batch: int, steps: int, warmup: int) -> float:
  import jax

  for _ in range(warmup):
    jax.block_until_ready(run_step())
  start = time.perf_counter()
  for _ in range(steps):
    result = run_step()
  jax.block_until_ready(result)
  return batch * steps / (time.perf_counter() - start)


def main(argv: Sequence[str] | None = None) -> None:
  import jax

  from efficientnet_jax.data import pipeline, preparation
  from efficientnet_jax.models import get_variant

  args = _parser().parse_args(argv)
  args.res = args.res or get_variant(args.arch).resolution
  args.image_size = args.res  # The names input_benchmark.data_config reads.
  with tempfile.TemporaryDirectory() as workdir:
    config = input_benchmark.data_config(args, workdir)
    preparation.ensure_prepared(config)
    bench = JaxSteps(args.arch, args.batch, args.res, args.dtype, args.depthwise, remat=False,
                     channels=config.channels)
    synthetic = _images_per_second(bench.train, args.batch, args.steps, args.warmup)
    it = pipeline.train_iterator(config, global_batch_size=args.batch, seed=0, process_index=0,
                                 process_count=1)
    try:
      fed = _images_per_second(lambda: bench.train(jax.device_put(next(it))), args.batch,
                               args.steps, args.warmup)
    finally:
      it.close()
  result = dict(arch=args.arch, res=args.res, batch=args.batch, dtype=args.dtype,
                device=bench.device.device_kind, workers=config.workers, name=bench.name,
                synthetic_img_s=synthetic, pipeline_img_s=fed, ratio=fed / synthetic)
  print(f"{args.arch} {args.res}x{args.res} batch {args.batch} {args.dtype} on "
        f"{result['device']} ({bench.name}), {config.workers} input workers")
  print(f"synthetic on-device batch {synthetic:9.1f} img/s")
  print(f"Grain pipeline            {fed:9.1f} img/s   ratio {result['ratio']:.2f}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()
