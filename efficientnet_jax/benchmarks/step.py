"""Step benchmark: our jitted train/eval step vs timm + PyTorch on the same shapes.

  python -m efficientnet_jax.benchmark step --arch=b0 --batch=64 [--res=224]
      [--dtype=bfloat16] [--depthwise=native,shifted] [--vs-torch] [--json=out.json]

Each contender runs in its own subprocess (its own peak memory, its own thread pools):
one per depthwise implementation of ours, and with --vs-torch the PyTorch reference
(timm's `efficientnet_<arch>` when timm is installed, else geffnet's, the same modules),
channels_last, bfloat16 autocast when --dtype=bfloat16. Both sides do the same work:
uint8 NHWC batch -> normalize -> forward -> label-smoothed cross entropy -> backward ->
AdamW. Compile time is reported apart; throughput is the median (and min-max) over
--repeats timed runs of --steps steps each, after warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from efficientnet_jax.weights.convention import IMAGENET_MEAN as MEAN, IMAGENET_STD as STD


def _timed_runs(step: Callable[[], Any], sync: Callable[[Any], None], steps: int,
                repeats: int) -> list[float]:
  """Seconds per step for each of `repeats` runs of `steps` calls."""
  out = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(steps):
      result = step()
    sync(result)
    out.append((time.perf_counter() - start) / steps)
  return out


def _host_peak_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class JaxSteps:
  """Our compiled train and eval steps on random data of the benchmark's shapes.

  The steps come from steps.build, as in training, with the default config's optimizer
  (AdamW lr 1e-3, weight decay 0.01, label smoothing 0.1, constant learning rate), on the
  first device; `train(batch)` runs the train step on `batch` (default: the fixed on-device
  batch) with the state donated.
  """

  def __init__(self, arch: str, batch: int, res: int, dtype: str, depthwise: str,
               remat: bool, channels: int = 3):
    import jax
    import numpy as np

    from efficientnet_jax import parallel, steps
    from efficientnet_jax.config import get_config
    from efficientnet_jax.models import create_model

    model = create_model(arch, num_classes=1000, in_channels=channels, dtype=dtype,
                         depthwise=depthwise, remat=remat)
    self.name = f"jax depthwise={model.opts.depthwise}" + (" remat" if remat else "")
    self.mesh = mesh = parallel.create_mesh(jax.devices()[:1])
    self.steps, self.state = steps.build(model, get_config().optim, mesh, mean=MEAN[:channels],
                                         std=STD[:channels], steps_per_epoch=1, num_epochs=1)
    rng = np.random.default_rng(0)
    self.batch = parallel.global_batch({
        "image": rng.integers(0, 256, (batch, res, res, channels), np.uint8),
        "label": rng.integers(0, 1000, (batch,), np.int32),
        "mask": np.ones((batch,), bool),
    }, mesh)
    self.train_batch = {k: self.batch[k] for k in ("image", "label")}
    weights = self.state.variables.weights()
    start = time.perf_counter()
    self.compiled_train = self.steps.train.lower(self.state, self.train_batch).compile()
    self.compiled_eval = self.steps.eval_step.lower(
        weights.params, weights.batch_stats, self.steps.rngs, self.batch).compile()
    self.compile_s = time.perf_counter() - start
    self.device = jax.devices()[0]

  def train(self, batch: dict[str, Any] | None = None) -> Any:
    batch = self.train_batch if batch is None else batch
    self.state, metrics = self.compiled_train(self.state, batch)
    return metrics

  def evaluate(self) -> Any:
    weights = self.state.variables.weights()
    return self.compiled_eval(weights.params, weights.batch_stats, self.steps.rngs, self.batch)

  def peak_bytes(self) -> int:
    stats = self.device.memory_stats() or {}
    return stats.get("peak_bytes_in_use") or _host_peak_bytes()


def run_jax(args: argparse.Namespace) -> dict[str, Any]:
  """Times our train and eval steps."""
  import jax

  bench = JaxSteps(args.arch, args.batch, args.res, args.dtype, args.depthwise, args.remat)
  sync = jax.block_until_ready
  for _ in range(args.warmup):
    sync(bench.train())
    sync(bench.evaluate())
  train_times = _timed_runs(bench.train, sync, args.steps, args.repeats)
  eval_times = _timed_runs(bench.evaluate, sync, args.steps, args.repeats)
  return dict(name=bench.name, device=bench.device.device_kind, compile_s=bench.compile_s,
              train_s=train_times, eval_s=eval_times, peak_bytes=bench.peak_bytes())


def _torch_model(arch: str) -> tuple[Any, str]:
  """timm's native EfficientNet when timm imports, else geffnet's (timm's predecessor); for
  EfficientNetV2 (v2_*) timm's efficientnetv2_* (PyTorch padding), else its tf_efficientnetv2_*
  (B0-B3 exist only so), which geffnet does not have."""
  base = f"efficientnetv2_{arch[3:]}" if arch.startswith("v2_") else f"efficientnet_{arch}"
  for module_name in ("timm", "geffnet"):
    try:
      module = __import__(module_name)
    except ImportError:
      continue
    for name in (base, f"tf_{base}"):
      try:
        return module.create_model(name, num_classes=1000), f"{module_name} {name}"
      except (RuntimeError, KeyError, ValueError):
        continue
  raise SystemExit(f"--vs-torch for {arch} needs timm" + ("" if arch.startswith("v2_") else
                   " or geffnet (make venv-test installs geffnet)") + ".")


def run_torch(args: argparse.Namespace) -> dict[str, Any]:
  """Times the PyTorch reference: channels_last, eager, autocast for bfloat16."""
  import torch

  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  model, name = _torch_model(args.arch)
  model = model.to(device, memory_format=torch.channels_last)
  opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
  loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
  mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255
  std = torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255
  gen = torch.Generator().manual_seed(0)
  images = torch.randint(0, 256, (args.batch, args.res, args.res, 3), dtype=torch.uint8,
                         generator=gen).to(device)
  labels = torch.randint(0, 1000, (args.batch,), generator=gen).to(device)
  autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")

  def prepare() -> Any:
    x = images.permute(0, 3, 1, 2).float()
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)

  def train() -> Any:
    model.train()
    with autocast:
      loss = loss_fn(model(prepare()), labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss

  def evaluate() -> Any:
    model.eval()
    with torch.inference_mode(), autocast:
      return model(prepare())

  def sync(_: Any) -> None:
    if device.type == "cuda":
      torch.cuda.synchronize()

  for _ in range(args.warmup):
    sync(train())
    sync(evaluate())
  train_times = _timed_runs(train, sync, args.steps, args.repeats)
  eval_times = _timed_runs(evaluate, sync, args.steps, args.repeats)
  if device.type == "cuda":
    peak, kind = torch.cuda.max_memory_allocated(), torch.cuda.get_device_name()
  else:
    peak, kind = _host_peak_bytes(), "cpu"
  return dict(name=f"torch {name} channels_last", device=kind, compile_s=0.0,
              train_s=train_times, eval_s=eval_times, peak_bytes=peak)


def _summarize(result: dict[str, Any], batch: int) -> dict[str, Any]:
  def rate(times: list[float]) -> dict[str, float]:
    return dict(median=batch / statistics.median(times), min=batch / max(times),
                max=batch / min(times))

  return dict(result, train_img_s=rate(result["train_s"]), eval_img_s=rate(result["eval_s"]))


def format_table(rows: Sequence[dict[str, Any]], reference: dict[str, Any] | None) -> str:
  header = (f"{'contender':<44}{'compile s':>10}{'train img/s (min-max)':>26}"
            f"{'eval img/s':>12}{'peak GB':>9}{'train x':>9}{'eval x':>8}")
  lines = [header, "-" * len(header)]
  for r in rows:
    t, e = r["train_img_s"], r["eval_img_s"]
    ratio_t = ratio_e = ""
    if reference is not None:
      ratio_t = f"{t['median'] / reference['train_img_s']['median']:.2f}"
      ratio_e = f"{e['median'] / reference['eval_img_s']['median']:.2f}"
    spread = f"{t['median']:.1f} ({t['min']:.1f}-{t['max']:.1f})"
    lines.append(f"{r['name']:<44}{r['compile_s']:>10.1f}{spread:>26}{e['median']:>12.1f}"
                 f"{r['peak_bytes'] / 2**30:>9.2f}{ratio_t:>9}{ratio_e:>8}")
  return "\n".join(lines)


def add_model_args(p: argparse.ArgumentParser, depthwise_help: str) -> None:
  """The flags that choose the model and the batch of a timed step."""
  p.add_argument("--arch", default="b0")
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--res", type=int, default=0, help="Image size; 0 = the architecture's resolution.")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--depthwise", default="auto", help=depthwise_help)


def model_parser(name: str, doc: str) -> argparse.ArgumentParser:
  """The parser of benchmark `name` (its module docstring `doc`) with the model flags."""
  p = argparse.ArgumentParser(prog=f"python -m efficientnet_jax.benchmark {name}",
                              description=doc.split("\n")[0])
  add_model_args(p, depthwise_help="auto, conv, shifted or native.")
  return p


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m efficientnet_jax.benchmark step",
                              description=__doc__.split("\n\n")[0])
  add_model_args(p, depthwise_help="Comma-separated depthwise implementations to time: auto, "
                 "conv, shifted, native.")
  p.add_argument("--remat", action="store_true", help="Rematerialise each block (less memory).")
  p.add_argument("--vs-torch", action="store_true", help="Also time the PyTorch reference.")
  p.add_argument("--steps", type=int, default=5, help="Steps per timed run.")
  p.add_argument("--repeats", type=int, default=3, help="Timed runs (median, min-max reported).")
  p.add_argument("--warmup", type=int, default=2, help="Untimed steps after compilation.")
  p.add_argument("--json", default="", help="Also write the results to this JSON file.")
  p.add_argument("--worker", default="", choices=("", "jax", "torch"), help=argparse.SUPPRESS)
  return p


def main(argv: Sequence[str] | None = None) -> None:
  args = _parser().parse_args(argv)
  if not args.res:
    from efficientnet_jax.models import get_arch
    args.res = get_arch(args.arch).resolution
  if args.worker:
    result = run_jax(args) if args.worker == "jax" else run_torch(args)
    print(json.dumps(result))
    return
  base = [sys.executable, "-m", "efficientnet_jax.benchmarks.step", f"--arch={args.arch}",
          f"--batch={args.batch}", f"--res={args.res}", f"--dtype={args.dtype}",
          f"--steps={args.steps}", f"--repeats={args.repeats}", f"--warmup={args.warmup}"]
  commands = [base + ["--worker=jax", f"--depthwise={d}"] + (["--remat"] if args.remat else [])
              for d in args.depthwise.split(",")]
  if args.vs_torch:
    commands.append(base + ["--worker=torch"])
  rows = []
  for command in commands:
    print("running:", " ".join(command[2:]), flush=True)
    # The worker's log (compilation warnings, errors) goes straight to our stderr.
    proc = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    if proc.returncode != 0:
      raise SystemExit(f"benchmark worker failed (exit {proc.returncode}); its log is above.")
    rows.append(_summarize(json.loads(proc.stdout.strip().splitlines()[-1]), args.batch))
  reference = rows[-1] if args.vs_torch else None
  print(f"\n{args.arch} {args.res}x{args.res} batch {args.batch} {args.dtype} on {rows[0]['device']}"
        + (f" (torch on {reference['device']})" if reference else ""))
  print(format_table(rows, reference))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(dict(config=vars(args), results=rows), f, indent=1)


if __name__ == "__main__":
  main()
