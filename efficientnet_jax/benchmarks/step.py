"""Step benchmark: our jitted train/eval step vs timm + PyTorch on the same shapes.

  python -m efficientnet_jax.benchmark step --arch=b0 --batch=64 [--res=224]
      [--dtype=bfloat16] [--depthwise=native,shifted] [--vs-torch] [--json=out.json]

Each contender runs in its own subprocess (its own peak memory, its own thread pools):
one per depthwise implementation of ours, and with --vs-torch the PyTorch reference
(timm's `efficientnet_<arch>` when timm is installed, else geffnet's, the same modules),
channels_last, bfloat16 autocast when --dtype=bfloat16, eager (the ratios' reference) and
under torch.compile (--torch-compile-mode; "" leaves it out). Both sides do the same work:
uint8 NHWC batch -> normalize -> forward -> label-smoothed cross entropy -> backward ->
AdamW. Compile time is reported apart; throughput is the median (and min-max) over
--repeats timed runs of --steps steps each, after warm-up.

The training features of the train step each add a contender of ours, and their cost is
the ratio against our plain step in the same run (its first row): --accumulate=K (K micro-
batches of batch / K per optimizer step), --sam (two gradients per step), --mixup (Mixup
and CutMix, alpha 0.8 / 1.0), --distill-teacher=ARCH (a frozen randomly initialized
teacher of ARCH at its own resolution, the batch resized to it on the device).
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
               remat: bool, channels: int = 3, feature: str = ""):
    import jax
    import numpy as np

    from efficientnet_jax import parallel, steps
    from efficientnet_jax.models import create_model

    model = create_model(arch, num_classes=1000, in_channels=channels, dtype=dtype,
                         depthwise=depthwise, remat=remat)
    self.name = (f"jax depthwise={model.opts.depthwise}" + (" remat" if remat else "")
                 + (f" +{feature}" if feature else ""))
    self.mesh = mesh = parallel.create_mesh(jax.devices()[:1])
    optim_config, options = _feature_options(feature, model.options)
    self.steps, self.state = steps.build(model, optim_config, mesh, mean=MEAN[:channels],
                                         std=STD[:channels], steps_per_epoch=1, num_epochs=1,
                                         **options)
    rng = np.random.default_rng(0)
    self.batch = parallel.global_batch({
        "image": rng.integers(0, 256, (batch, res, res, channels), np.uint8),
        "label": rng.integers(0, 1000, (batch,), np.int32),
        "mask": np.ones((batch,), bool),
    }, mesh)
    self.train_batch = {k: self.batch[k] for k in ("image", "label")}
    weights = self.state.variables.weights()
    start = time.perf_counter()
    self.compiled_train = self.steps.train_step.lower(self.state, self.train_batch,
                                                      self.steps.teacher).compile()
    self.compiled_eval = self.steps.eval_step.lower(
        weights.params, weights.batch_stats, self.steps.rngs, self.batch).compile()
    self.compile_s = time.perf_counter() - start
    self.device = jax.devices()[0]

  def train(self, batch: dict[str, Any] | None = None) -> Any:
    batch = self.train_batch if batch is None else batch
    self.state, metrics = self.compiled_train(self.state, batch, self.steps.teacher)
    return metrics

  def evaluate(self) -> Any:
    weights = self.state.variables.weights()
    return self.compiled_eval(weights.params, weights.batch_stats, self.steps.rngs, self.batch)

  def peak_bytes(self) -> int:
    stats = self.device.memory_stats() or {}
    return stats.get("peak_bytes_in_use") or _host_peak_bytes()


FEATURES = ("accumulate", "sam", "mixup", "distill")


def _feature_options(feature: str, student: Any) -> tuple[Any, dict[str, Any]]:
  """(config.optim, steps.build keyword arguments) of a step with `feature` (e.g. 'sam',
  'accumulate=4', 'distill=b4'; '' = the plain step, the default config's optimizer)."""
  from efficientnet_jax import distill
  from efficientnet_jax.config import get_config
  from efficientnet_jax.models import create_model, get_arch

  config = get_config()
  name, _, value = feature.partition("=")
  options: dict[str, Any] = {}
  if name == "accumulate":
    options["accumulate_steps"] = int(value)
  elif name == "sam":
    config.optim.sam_rho = 0.05
  elif name == "mixup":
    config.mixup.update(alpha=0.8, cutmix_alpha=1.0)
    options["mixup_config"] = config.mixup
  elif name == "distill":
    teacher = create_model(value, num_classes=student.num_classes, in_channels=student.in_channels,
                           dtype=student.dtype, depthwise=student.depthwise)
    teacher.eval()
    options["teacher"] = distill.Teacher(teacher, MEAN[:student.in_channels],
                                         STD[:student.in_channels], get_arch(value).resolution,
                                         alpha=0.5, temperature=1.0)
  elif name:
    raise ValueError(f"Unknown feature {feature!r}; one of {FEATURES}.")
  return config.optim, options


def run_jax(args: argparse.Namespace) -> dict[str, Any]:
  """Times our train and eval steps."""
  import jax

  bench = JaxSteps(args.arch, args.batch, args.res, args.dtype, args.depthwise, args.remat,
                   feature=args.feature)
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


def run_torch(args: argparse.Namespace, compile_mode: str = "") -> dict[str, Any]:
  """Times the PyTorch reference: channels_last, autocast for bfloat16; eager, or the model
  under torch.compile(mode=compile_mode), whose first train and eval steps (compilation,
  one per mode) are timed as its compile time."""
  import torch

  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  model, name = _torch_model(args.arch)
  model = model.to(device, memory_format=torch.channels_last)
  opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
  if compile_mode:
    model = torch.compile(model, mode=compile_mode)
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

  start = time.perf_counter()
  if compile_mode:
    sync(train())
    sync(evaluate())
  compile_s = time.perf_counter() - start
  for _ in range(args.warmup):
    sync(train())
    sync(evaluate())
  train_times = _timed_runs(train, sync, args.steps, args.repeats)
  eval_times = _timed_runs(evaluate, sync, args.steps, args.repeats)
  if device.type == "cuda":
    peak, kind = torch.cuda.max_memory_allocated(), torch.cuda.get_device_name()
  else:
    peak, kind = _host_peak_bytes(), "cpu"
  mode = f" compile={compile_mode}" if compile_mode else " eager"
  return dict(name=f"torch {name} channels_last{mode}", device=kind, compile_s=compile_s,
              train_s=train_times, eval_s=eval_times, peak_bytes=peak)


def _summarize(result: dict[str, Any], batch: int) -> dict[str, Any]:
  def rate(times: list[float]) -> dict[str, float]:
    return dict(median=batch / statistics.median(times), min=batch / max(times),
                max=batch / min(times))

  return dict(result, train_img_s=rate(result["train_s"]), eval_img_s=rate(result["eval_s"]))


def format_table(rows: Sequence[dict[str, Any]], reference: dict[str, Any] | None) -> str:
  header = (f"{'contender':<64}{'compile s':>10}{'train img/s (min-max)':>26}"
            f"{'eval img/s':>12}{'peak GB':>9}{'train x':>9}{'eval x':>8}")
  lines = [header, "-" * len(header)]
  for r in rows:
    t, e = r["train_img_s"], r["eval_img_s"]
    ratio_t = ratio_e = ""
    if reference is not None:
      ratio_t = f"{t['median'] / reference['train_img_s']['median']:.2f}"
      ratio_e = f"{e['median'] / reference['eval_img_s']['median']:.2f}"
    spread = f"{t['median']:.1f} ({t['min']:.1f}-{t['max']:.1f})"
    lines.append(f"{r['name']:<64}{r['compile_s']:>10.1f}{spread:>26}{e['median']:>12.1f}"
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
  p.add_argument("--vs-torch", action="store_true", help="Also time the PyTorch reference, "
                 "eager and compiled.")
  p.add_argument("--torch-compile-mode", default="default",
                 help="torch.compile mode of the compiled PyTorch contender (modes with CUDA "
                 "graphs need a GPU); empty: only eager.")
  p.add_argument("--accumulate", type=int, default=0,
                 help="Also time gradient accumulation over this many micro-batches.")
  p.add_argument("--sam", action="store_true", help="Also time SAM (rho 0.05).")
  p.add_argument("--mixup", action="store_true", help="Also time Mixup/CutMix in the step.")
  p.add_argument("--distill-teacher", default="",
                 help="Also time distillation from a teacher of this architecture, e.g. b4.")
  p.add_argument("--steps", type=int, default=5, help="Steps per timed run.")
  p.add_argument("--repeats", type=int, default=3, help="Timed runs (median, min-max reported).")
  p.add_argument("--warmup", type=int, default=2, help="Untimed steps after compilation.")
  p.add_argument("--json", default="", help="Also write the results to this JSON file.")
  p.add_argument("--worker", default="", choices=("", "jax", "torch", "torch_compile"),
                 help=argparse.SUPPRESS)
  p.add_argument("--feature", default="", help=argparse.SUPPRESS)
  return p


def _requested_features(args: argparse.Namespace) -> list[str]:
  """The --feature values of the contenders that the feature flags ask for."""
  from efficientnet_jax.models import specs

  if args.accumulate > 1 and args.batch % args.accumulate:
    raise SystemExit(f"--batch={args.batch} must be a multiple of --accumulate={args.accumulate}.")
  if args.distill_teacher and args.distill_teacher not in specs.ARCHS:
    raise SystemExit(f"--distill-teacher={args.distill_teacher}: not one of {', '.join(specs.ARCHS)}.")
  features = [f"accumulate={args.accumulate}"] if args.accumulate > 1 else []
  features += ["sam"] * args.sam + ["mixup"] * args.mixup
  return features + ([f"distill={args.distill_teacher}"] if args.distill_teacher else [])


def main(argv: Sequence[str] | None = None) -> None:
  args = _parser().parse_args(argv)
  if not args.res:
    from efficientnet_jax.models import get_arch
    args.res = get_arch(args.arch).resolution
  if args.worker:
    result = (run_jax(args) if args.worker == "jax" else
              run_torch(args, args.torch_compile_mode if args.worker == "torch_compile" else ""))
    print(json.dumps(result))
    return
  base = [sys.executable, "-m", "efficientnet_jax.benchmarks.step", f"--arch={args.arch}",
          f"--batch={args.batch}", f"--res={args.res}", f"--dtype={args.dtype}",
          f"--steps={args.steps}", f"--repeats={args.repeats}", f"--warmup={args.warmup}"]
  ours = [base + ["--worker=jax", f"--depthwise={d}"] + (["--remat"] if args.remat else [])
          for d in args.depthwise.split(",")]
  features = _requested_features(args)
  commands = ours + [ours[0] + [f"--feature={f}"] for f in features]
  if args.vs_torch:
    commands.append(base + ["--worker=torch"])
    if args.torch_compile_mode:
      commands.append(base + ["--worker=torch_compile",
                              f"--torch-compile-mode={args.torch_compile_mode}"])
  rows = []
  for command in commands:
    print("running:", " ".join(command[2:]), flush=True)
    # The worker's log (compilation warnings, errors) goes straight to our stderr.
    proc = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    if proc.returncode != 0:
      raise SystemExit(f"benchmark worker failed (exit {proc.returncode}); its log is above.")
    rows.append(_summarize(json.loads(proc.stdout.strip().splitlines()[-1]), args.batch))
  # Features are costs against our plain step; otherwise ratios are against eager PyTorch.
  reference = (rows[0] if features else
               rows[len(ours) + len(features)] if args.vs_torch else None)
  print(f"\n{args.arch} {args.res}x{args.res} batch {args.batch} {args.dtype} on {rows[0]['device']}"
        + (f" (torch on {rows[-1]['device']})" if args.vs_torch else "")
        + (f"; ratios against {rows[0]['name']}" if features else ""))
  print(format_table(rows, reference))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(dict(config=vars(args), results=rows), f, indent=1)


if __name__ == "__main__":
  main()
