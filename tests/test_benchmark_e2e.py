"""The end-to-end benchmark: the same compiled step fed on-device vs by the Grain pipeline."""

import json
import math
import multiprocessing
import os
import time

import pytest

from efficientnet_jax.benchmarks import e2e


def test_e2e_alternates_rounds_and_reports_medians_and_their_ratio(tmp_path):
  out = tmp_path / "e2e.json"
  # Same shapes as test_benchmark_step: the step compiles once (persistent cache).
  e2e.main(["--arch=b0", "--batch=2", "--res=32", "--steps=2", "--warmup=1", "--workers=0",
            "--repeats=2", "--synthetic_images=16", f"--json={out}"])
  result = json.loads(out.read_text())
  for feed in ("synthetic", "pipeline"):
    rounds = result[feed]["rounds"]
    assert len(rounds) == 2 and all(r > 0 for r in rounds)
    assert result[f"{feed}_img_s"] == result[feed]["median"] == sum(rounds) / 2
    assert (result[feed]["min"], result[feed]["max"]) == (min(rounds), max(rounds))
  assert math.isclose(result["ratio"], result["pipeline_img_s"] / result["synthetic_img_s"])
  assert (result["res"], result["batch"], result["workers"]) == (32, 2, 0)
  if os.path.isdir("/proc"):  # Worker CPU is read there; see the test below.
    assert set(result["worker_cores"]) == {"synthetic", "pipeline"}
  printed = e2e.format_result(result)
  assert "2 alternating rounds of 2 steps" in printed and f"ratio {result['ratio']:.2f}" in printed


def _spin(seconds: float) -> None:
  end = time.process_time() + seconds
  while time.process_time() < end:
    pass


def _spin_then_sleep(seconds: float, spun) -> None:
  _spin(seconds)
  spun.set()
  time.sleep(60)


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="child CPU time is read from /proc")
def test_children_cpu_seconds_counts_children_not_self():
  ctx = multiprocessing.get_context("spawn")
  spun = ctx.Event()
  child = ctx.Process(target=_spin_then_sleep, args=(0.5, spun))
  before = e2e.children_cpu_seconds()
  child.start()
  try:
    assert spun.wait(timeout=60)
    with_child = e2e.children_cpu_seconds()
    assert with_child - before >= 0.45  # The child's spin (plus its start-up).
    _spin(0.3)  # The parent's own time is not counted.
    assert e2e.children_cpu_seconds() - with_child < 0.1
  finally:
    child.kill()
    child.join()
