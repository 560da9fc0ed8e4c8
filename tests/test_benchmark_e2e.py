"""The end-to-end benchmark: the same compiled step fed on-device vs by the Grain pipeline."""

import json

from efficientnet_jax.benchmarks import e2e


def test_e2e_reports_both_feeds_and_their_ratio(tmp_path):
  out = tmp_path / "e2e.json"
  # Same shapes as test_benchmark_step: the step compiles once (persistent cache).
  e2e.main(["--arch=b0", "--batch=2", "--res=32", "--steps=2", "--warmup=1", "--workers=0",
            "--synthetic_images=16", f"--json={out}"])
  result = json.loads(out.read_text())
  assert result["synthetic_img_s"] > 0 and result["pipeline_img_s"] > 0
  assert result["ratio"] == result["pipeline_img_s"] / result["synthetic_img_s"]
  assert (result["res"], result["batch"], result["workers"]) == (32, 2, 0)
