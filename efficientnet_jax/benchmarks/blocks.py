"""Blocks benchmark: each stage of an architecture timed alone, by block type and conv form.

  python -m efficientnet_jax.benchmark blocks --arch=v2_s --batch=16 [--res=384]
      [--dtype=bfloat16] [--depthwise=auto] [--repeats=3]

The model is built as for training; each stage gets a random input of its real shape and
its blocks run jitted, in training (forward and the gradient of a sum of squares with
respect to the stage's parameters and input; no optimizer) and in evaluation (forward on
running statistics). Fused-MBConv stages (EfficientNetV2) run with their k x k convolution
in both forms, `xla` (XLA's convolution) and `im2col` (one matmul over im2col patches):
`form` is the one the model picks, `other` the other one's time. Shares are of the stages'
total with the model's own forms (stem, head, loss and optimizer excluded). Times are
medians of --repeats runs after one warm-up run.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from typing import Any

from efficientnet_jax.benchmarks.step import _timed_runs, model_parser
from efficientnet_jax.models import specs

FORMS = ("im2col", "xla")
MODES = ("train", "eval")


def stage_inputs(block_specs: Sequence[Any], res: int) -> dict[int, tuple[int, int]]:
  """(input side, input channels) of each stage: the stem halves `res`, as does every stride-2
  block (TF 'same' and symmetric padding both give ceil(size / 2) for 3x3 and 5x5 kernels)."""
  size, inputs = -(-res // 2), {}
  for block in block_specs:
    inputs.setdefault(block.stage, (size, block.in_channels))
    if block.stride == 2:
      size = -(-size // 2)
  return inputs


def _time_stage(blocks: list[Any], x: Any, mode: str, repeats: int) -> float:
  """Median seconds of one run of `blocks` on `x` (train: forward + backward)."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  _set_mode(blocks, mode)
  graphdef, params, rest = nnx.split(blocks, nnx.Param, ...)

  def loss(params, x, rest):
    y = x
    for block in nnx.merge(graphdef, params, rest, copy=True):
      y = block(y)
    return jnp.mean(jnp.square(y.astype(jnp.float32)))

  fn = jax.jit(jax.grad(loss, argnums=(0, 1)) if mode == "train" else loss)
  jax.block_until_ready(fn(params, x, rest))
  return statistics.median(_timed_runs(lambda: fn(params, x, rest), jax.block_until_ready, 1,
                                       repeats))


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
  """One row per stage: block type, count, input shape; per mode the seconds with the model's
  own conv form (`form`: its name, '' without a choice) and with the other one (`other`)."""
  import jax
  import numpy as np

  from efficientnet_jax.models import create_model

  model = create_model(args.arch, num_classes=1000, dtype=args.dtype, depthwise=args.depthwise)
  rng = np.random.default_rng(0)
  rows = []
  for stage, (size, channels) in stage_inputs(model.block_specs, args.res).items():
    block_specs = [b for b in model.block_specs if b.stage == stage]
    blocks = [getattr(model, b.name) for b in block_specs]
    x = jax.numpy.asarray(rng.standard_normal((args.batch, size, size, channels), np.float32),
                          model.opts.dtype)
    row = dict(stage=stage, block=block_specs[0].block, count=len(blocks), size=size,
               channels=f"{channels}->{block_specs[-1].out_channels}", seconds={}, form={}, other={})
    for mode in MODES:
      if block_specs[0].block != specs.FUSED_MBCONV:
        row["seconds"][mode], row["form"][mode] = _time_stage(blocks, x, mode, args.repeats), ""
        continue
      _set_mode(blocks, mode)
      row["form"][mode] = "im2col" if blocks[0].uses_im2col() else "xla"
      for form in FORMS:
        for block in blocks:
          block.conv_form = form
        key = "seconds" if form == row["form"][mode] else "other"
        row[key][mode] = _time_stage(blocks, x, mode, args.repeats)
      for block in blocks:
        block.conv_form = "auto"
    rows.append(row)
  return rows


def _set_mode(blocks: list[Any], mode: str) -> None:
  for block in blocks:
    block.train() if mode == "train" else block.eval()


def format_table(rows: Sequence[dict[str, Any]]) -> str:
  header = (f"{'stage':<6}{'block':<14}{'n':>3}{'px':>5}{'channels':>11}  "
            + "  ".join(f"{mode + ' ms':>9}{'form':>7}{'other':>7}{'share':>7}" for mode in MODES))
  lines = [header, "-" * len(header)]
  totals = {mode: sum(r["seconds"][mode] for r in rows) for mode in MODES}
  fused_share = dict.fromkeys(MODES, 0.0)
  for r in rows:
    cells = []
    for mode in MODES:
      share = r["seconds"][mode] / totals[mode]
      other = f"{r['other'][mode] * 1e3:.0f}" if mode in r["other"] else ""
      cells.append(f"{r['seconds'][mode] * 1e3:>9.0f}{r['form'][mode]:>7}{other:>7}{share:>7.1%}")
      if r["block"] == specs.FUSED_MBCONV:
        fused_share[mode] += share
    lines.append(f"{r['stage']:<6}{r['block']:<14}{r['count']:>3}{r['size']:>5}{r['channels']:>11}  "
                 + "  ".join(cells))
  lines.append(f"stages in all: train {totals['train'] * 1e3:.0f} ms, eval {totals['eval'] * 1e3:.0f} ms"
               f"; Fused-MBConv stages {fused_share['train']:.1%} of train, "
               f"{fused_share['eval']:.1%} of eval")
  return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
  p = model_parser("blocks", __doc__)
  p.add_argument("--repeats", type=int, default=3, help="Timed runs per stage (median).")
  return p


def main(argv: Sequence[str] | None = None) -> None:
  from efficientnet_jax.models import get_arch

  args = _parser().parse_args(argv)
  args.res = args.res or get_arch(args.arch).resolution
  rows = measure(args)
  print(f"{args.arch} {args.res}x{args.res} batch {args.batch} {args.dtype}, depthwise="
        f"{args.depthwise}: each stage alone; ms per run (form: the model's conv form, other: the "
        "other form's ms)")
  print(format_table(rows))


if __name__ == "__main__":
  main()
