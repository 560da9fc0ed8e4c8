"""The step benchmark's workers and report, on tiny shapes."""

import json
import subprocess

import pytest

from efficientnet_jax.benchmarks import step


def _args(**overrides):
  args = step._parser().parse_args(["--arch=b0", "--batch=2", "--res=32", "--steps=1",
                                    "--repeats=2", "--warmup=1"])
  for k, v in overrides.items():
    setattr(args, k, v)
  return args


def test_jax_worker_times_our_train_and_eval_steps():
  result = step.run_jax(_args(depthwise="shifted"))
  assert result["name"] == "jax depthwise=shifted"
  assert len(result["train_s"]) == 2 and all(t > 0 for t in result["train_s"] + result["eval_s"])
  assert result["compile_s"] > 0 and result["peak_bytes"] > 0


@pytest.mark.torch
def test_torch_worker_and_ratio_table():
  ours = step._summarize(dict(name="ours", device="cpu", compile_s=1.0, train_s=[0.5, 1.0, 2.0],
                              eval_s=[0.1], peak_bytes=2**30), batch=2)
  assert ours["train_img_s"] == dict(median=2.0, min=1.0, max=4.0)
  ref = step._summarize(step.run_torch(_args()), batch=2)
  assert ref["name"].startswith("torch ") and ref["train_img_s"]["median"] > 0
  table = step.format_table([ours, ref], ref)
  ratio = ours["train_img_s"]["median"] / ref["train_img_s"]["median"]
  assert f"{ratio:.2f}" in table.splitlines()[2]
  assert table.splitlines()[3].split()[-2:] == ["1.00", "1.00"]


@pytest.mark.torch
def test_torch_compile_contender_runs_beside_eager(monkeypatch, capsys):
  import torch

  modes = []
  monkeypatch.setattr(torch, "compile", lambda model, mode: modes.append(mode) or model)
  tiny = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
                             torch.nn.Flatten(), torch.nn.Linear(4, 1000))
  monkeypatch.setattr(step, "_torch_model", lambda arch: (tiny, "tiny"))
  result = step.run_torch(_args(), "max-autotune-no-cudagraphs")
  assert modes == ["max-autotune-no-cudagraphs"] and result["compile_s"] > 0
  assert result["name"] == "torch tiny channels_last compile=max-autotune-no-cudagraphs"
  assert step.run_torch(_args())["name"] == "torch tiny channels_last eager" and len(modes) == 1

  workers = []

  def fake_run(command, **kwargs):  # Each contender's subprocess: eager is 2x faster.
    worker = next(a.split("=")[1] for a in command if a.startswith("--worker="))
    workers.append(worker)
    seconds = {"jax": 1.0, "torch": 0.5, "torch_compile": 0.25}[worker]
    row = dict(name=worker, device="cpu", compile_s=3.0, train_s=[seconds], eval_s=[seconds],
               peak_bytes=1)
    return subprocess.CompletedProcess(command, 0, stdout=json.dumps(row))

  monkeypatch.setattr(step.subprocess, "run", fake_run)
  step.main(["--arch=b0", "--res=32", "--vs-torch", "--torch-compile-mode=default"])
  assert workers == ["jax", "torch", "torch_compile"]
  rows = {line.split()[0]: line.split()[-2:] for line in capsys.readouterr().out.splitlines()
          if line.split() and line.split()[0] in workers}
  assert rows == {"jax": ["0.50", "0.50"], "torch": ["1.00", "1.00"],
                  "torch_compile": ["2.00", "2.00"]}  # Ratios against eager torch.


def test_feature_flags_add_contenders_measured_against_the_plain_step():
  args = _args(accumulate=4, sam=True, mixup=True, distill_teacher="b1", batch=8)
  assert step._requested_features(args) == ["accumulate=4", "sam", "mixup", "distill=b1"]
  assert step._requested_features(_args()) == []
  with pytest.raises(SystemExit, match="--batch=6 must be a multiple of --accumulate=4"):
    step._requested_features(_args(accumulate=4, batch=6))
  with pytest.raises(SystemExit, match="--distill-teacher=b9"):
    step._requested_features(_args(distill_teacher="b9"))
  from efficientnet_jax.models import create_model  # pylint: disable=g-import-not-at-top

  student = create_model("b0", num_classes=10).options
  optim, options = step._feature_options("accumulate=4", student)
  assert options == {"accumulate_steps": 4} and optim.sam_rho == 0
  assert step._feature_options("sam", student)[0].sam_rho > 0
  assert step._feature_options("mixup", student)[1]["mixup_config"].cutmix_alpha > 0
  teacher = step._feature_options("distill=b1", student)[1]["teacher"]
  assert teacher.model.arch == "b1" and teacher.model.num_classes == 10 and teacher.image_size == 240
