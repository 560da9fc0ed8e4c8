#!/usr/bin/env python3
r"""A grid of config overrides, one training run (workdir) per trial.

  python launch/sweep.py --config=configs/b0_cars_scratch_gray.py --runs_dir=runs/sweep \
      --grid=model.dropout_rate=0.2,0.5 --grid=optim.weight_decay=0.1,0.3 \
      --set=train.num_epochs=100

runs the 4 trials one after another, in <runs_dir>/<trial>/ (e.g. dropout_rate=0.2,
weight_decay=0.1), then writes the report (python -m efficientnet_jax.report RUNS_DIR).
Finished trials (with results.json) are skipped and interrupted ones resume, so rerunning
the same command continues a sweep. With --slurm nothing runs here: it writes
<runs_dir>/sweep.sbatch, a SLURM job array of one task per trial, to submit with
`sbatch [options] <runs_dir>/sweep.sbatch` (or pass --submit). Arguments after `--` go to
every run of `python -m efficientnet_jax.main`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SBATCH = """#!/bin/bash
# SLURM job array of the sweep in {runs_dir}: task i trains trial i of trials.txt.
# Defaults below; options given to sbatch override them (e.g. --partition, --time, --gpus).
#SBATCH --job-name=efficientnet_sweep
#SBATCH --array=0-{last}
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gpus=1
#SBATCH --cpus-per-task=8
#SBATCH --output={runs_dir}/slurm-%A_%a.out
set -euo pipefail
cd {cwd}
export PYTHONPATH={repo}${{PYTHONPATH:+:$PYTHONPATH}}
mapfile -t trials < {runs_dir}/trials.txt
eval "args=(${{trials[$SLURM_ARRAY_TASK_ID]}})"
exec "${{PYTHON:-{python}}}" -m efficientnet_jax.main "${{args[@]}}"
"""


def parse_assignment(text: str, flag: str) -> tuple[str, list[str]]:
  """'optim.lr=1e-3,3e-4' -> ('optim.lr', ['1e-3', '3e-4'])."""
  key, sep, values = text.partition("=")
  if not sep or not key or not values:
    raise SystemExit(f"error: {flag}={text!r}: expected FIELD=VALUE[,VALUE...], "
                     f"e.g. {flag}=optim.lr=1e-3,3e-4")
  return key, values.split(",")


def trials(grid: list[tuple[str, list[str]]]) -> list[tuple[str, dict[str, str]]]:
  """(name, {field: value}) per combination; names use the fields' last components."""
  short = [key.rsplit(".", 1)[-1] for key, _ in grid]
  labels = short if len(set(short)) == len(short) else [key for key, _ in grid]
  out = []
  for values in itertools.product(*(vals for _, vals in grid)):
    name = ",".join(f"{label}={value}" for label, value in zip(labels, values))
    out.append((name.replace(os.sep, "_").replace(" ", ""),
                {key: value for (key, _), value in zip(grid, values)}))
  return out


def main_args(config: str, workdir: str, overrides: dict[str, str], extra: list[str]) -> list[str]:
  return [f"--config={config}", f"--workdir={workdir}",
          *(f"--config.{k}={v}" for k, v in overrides.items()), *extra]


def run_sequentially(runs_dir: str, jobs: list[tuple[str, list[str]]]) -> list[str]:
  """Runs each trial's training (output in <trial>/train.log); returns the failed trials."""
  path = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
  env = {**os.environ, "PYTHONPATH": path}
  failed = []
  for i, (name, args) in enumerate(jobs, 1):
    workdir = os.path.join(runs_dir, name)
    if os.path.isfile(os.path.join(workdir, "results.json")):
      print(f"[{i}/{len(jobs)}] {name}: done before, skipped", flush=True)
      continue
    os.makedirs(workdir, exist_ok=True)
    log_path = os.path.join(workdir, "train.log")
    start = time.perf_counter()
    with open(log_path, "a") as log:
      code = subprocess.run([sys.executable, "-m", "efficientnet_jax.main", *args], env=env,
                            stdout=log, stderr=subprocess.STDOUT).returncode
    status = "ok" if code == 0 else f"FAILED (exit {code}; see {log_path})"
    print(f"[{i}/{len(jobs)}] {name}: {status} in {time.perf_counter() - start:.0f} s", flush=True)
    if code:
      failed.append(name)
  return failed


def write_slurm_array(runs_dir: str, jobs: list[tuple[str, list[str]]]) -> str:
  """Writes trials.txt and sweep.sbatch into `runs_dir`; returns the sbatch path."""
  with open(os.path.join(runs_dir, "trials.txt"), "w") as f:
    f.writelines(shlex.join(args) + "\n" for _, args in jobs)
  path = os.path.join(runs_dir, "sweep.sbatch")
  with open(path, "w") as f:
    f.write(SBATCH.format(runs_dir=shlex.quote(runs_dir), last=len(jobs) - 1,
                          cwd=shlex.quote(os.getcwd()), repo=shlex.quote(REPO),
                          python=sys.executable))
  return path


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True, help="Config file, e.g. configs/b0_cars.py.")
  parser.add_argument("--runs_dir", required=True, help="Folder of the trials' workdirs.")
  parser.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2,...",
                      help="A config field and its values; repeat for a grid of several.")
  parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                      help="A config override shared by every trial.")
  parser.add_argument("--slurm", action="store_true",
                      help="Write a SLURM job array (sweep.sbatch) instead of running here.")
  parser.add_argument("--submit", action="store_true", help="With --slurm: run sbatch on it.")
  parser.add_argument("main_args", nargs="*", help="After --: flags for efficientnet_jax.main.")
  args = parser.parse_args(argv)

  if not args.grid:
    parser.error("give at least one --grid=FIELD=V1,V2,...")
  grid = [parse_assignment(g, "--grid") for g in args.grid]
  shared = {}
  for s in args.set:
    key, values = parse_assignment(s, "--set")
    shared[key] = ",".join(values)
  config = os.path.abspath(args.config)
  runs_dir = os.path.abspath(args.runs_dir)
  os.makedirs(runs_dir, exist_ok=True)
  jobs = [(name, main_args(config, os.path.join(runs_dir, name), {**shared, **overrides},
                           args.main_args)) for name, overrides in trials(grid)]
  with open(os.path.join(runs_dir, "sweep.json"), "w") as f:
    json.dump({"config": config, "grid": dict(grid), "set": shared,
               "trials": {name: cmd for name, cmd in jobs}}, f, indent=2)

  if args.slurm:
    path = write_slurm_array(runs_dir, jobs)
    print(f"{len(jobs)} trials: sbatch {path}")
    if args.submit:
      return subprocess.run(["sbatch", path], check=False).returncode
    return 0

  try:
    failed = run_sequentially(runs_dir, jobs)
  except KeyboardInterrupt:  # The running trial got the signal too and saved its checkpoint.
    print("Interrupted; rerun the same command to continue the sweep.", file=sys.stderr)
    return 130
  report = subprocess.run([sys.executable, "-m", "efficientnet_jax.report", runs_dir], cwd=REPO,
                          check=False).returncode
  if failed:
    print(f"{len(failed)} trial(s) failed: {', '.join(failed)}", file=sys.stderr)
  return 1 if failed or report else 0


if __name__ == "__main__":
  sys.exit(main())
