"""Profile benchmark: where one compiled train (or eval) step spends its time, by XLA op.

  python -m efficientnet_jax.benchmark profile --arch=b0 --batch=64 [--mode=eval]
      [--dtype=bfloat16] [--depthwise=shifted] [--top=20]

Traces one step of benchmarks.step.JaxSteps with jax.profiler after warm-up, matches the
trace's events to the instructions of the compiled program, and sums their time per kind
of instruction (the fusion's name without its number, e.g. `multiply_add_fusion`, `dot`,
`ynn_fusion`) and per pass: `bwd` when the instruction comes from differentiation,
`rest` for the forward pass, the loss and the optimizer update.
Each row: milliseconds in the step, share of all op time, instruction count, and one
example with its shape.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from efficientnet_jax.benchmarks.step import JaxSteps, model_parser

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ([^\n]*)$", re.MULTILINE)
_OP_NAME = re.compile(r'op_name="([^"]*)"')


class Instruction(NamedTuple):
  shape: str
  op_name: str


def instructions(hlo_text: str) -> dict[str, Instruction]:
  """Instruction name -> (result shape, jax op_name metadata) of a compiled HLO module."""
  program = {}
  for m in _INSTRUCTION.finditer(hlo_text):
    op_name = _OP_NAME.search(m.group(3))
    program[m.group(1)] = Instruction(m.group(2), op_name.group(1) if op_name else "")
  return program


def breakdown(events: Iterable[tuple[str, float]], program: dict[str, Instruction]
              ) -> list[dict[str, object]]:
  """Sums (event name, seconds) over the program's instructions, by kind and pass.

  Events that are not instructions of `program` (runtime bookkeeping, Python) are ignored.
  Rows are sorted by time, largest first.
  """
  seconds: dict[tuple[str, str], float] = collections.defaultdict(float)
  names: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
  for name, duration in events:
    instruction = program.get(name)
    if instruction is None:
      continue
    key = ("bwd" if "transpose(" in instruction.op_name else "rest",
           re.sub(r"\.\d+$", "", name))
    seconds[key] += duration
    names[key].add(name)
  total = sum(seconds.values()) or 1.0
  rows = []
  for key, value in sorted(seconds.items(), key=lambda kv: -kv[1]):
    example = min(names[key])
    rows.append(dict(phase=key[0], kind=key[1], seconds=value, share=value / total,
                     count=len(names[key]), example=example, shape=program[example].shape))
  return rows


def trace_events(trace_dir: str) -> list[tuple[str, float]]:
  """(name, seconds) of every event in the newest trace under `trace_dir`."""
  import jax

  paths = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
  if not paths:
    raise SystemExit(f"jax.profiler wrote no trace under {trace_dir}.")
  data = jax.profiler.ProfileData.from_file(max(paths, key=os.path.getmtime))
  return [(event.name, event.duration_ns * 1e-9)
          for plane in data.planes for line in plane.lines for event in line.events]


def format_rows(rows: Sequence[dict[str, object]], top: int) -> str:
  lines = [f"{'pass':<5}{'kind':<34}{'ms':>9}{'share':>8}{'count':>7}  example",
           "-" * 100]
  for r in rows[:top]:
    lines.append(f"{r['phase']:<5}{r['kind']:<34}{r['seconds'] * 1e3:>9.1f}{r['share']:>8.1%}"
                 f"{r['count']:>7}  {r['example']} {r['shape']}")
  total = sum(r["seconds"] for r in rows)
  lines.append(f"{'':<5}{'all ops':<34}{total * 1e3:>9.1f}{'100.0%':>8}"
               f"{sum(r['count'] for r in rows):>7}")
  return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
  p = model_parser("profile", __doc__)
  p.add_argument("--mode", default="train", choices=("train", "eval"))
  p.add_argument("--warmup", type=int, default=2, help="Untimed steps before the traced one.")
  p.add_argument("--top", type=int, default=20, help="Rows to print.")
  return p


def main(argv: Sequence[str] | None = None) -> None:
  import jax

  from efficientnet_jax.models import get_arch

  args = _parser().parse_args(argv)
  args.res = args.res or get_arch(args.arch).resolution
  bench = JaxSteps(args.arch, args.batch, args.res, args.dtype, args.depthwise, remat=False)
  step = bench.train if args.mode == "train" else bench.evaluate
  compiled = bench.compiled_train if args.mode == "train" else bench.compiled_eval
  for _ in range(args.warmup):
    jax.block_until_ready(step())
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      jax.block_until_ready(step())
    events = trace_events(trace_dir)
  rows = breakdown(events, instructions(compiled.as_text()))
  print(f"{args.arch} {args.res}x{args.res} batch {args.batch} {args.dtype} {args.mode} step, "
        f"{bench.name} on {bench.device.device_kind}")
  print(format_rows(rows, args.top))


if __name__ == "__main__":
  main()
