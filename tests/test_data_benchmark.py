"""The input benchmark's measurements and the benchmark dispatcher."""

import io

import numpy as np
import pytest

from efficientnet_jax import benchmark
from efficientnet_jax.benchmarks import input as input_benchmark
from efficientnet_jax.data import synthetic, transforms as T


def _records(n=4):
  rng = np.random.default_rng(0)
  records = []
  for i in range(n):
    image, _ = synthetic.synthetic_image(rng, i, n, (70, 48))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    records.append({"image": buffer.getvalue(), "label": i,
                    "bbox": np.array([0.1, 0.1, 0.9, 0.9], np.float32), "file_name": f"{i}.jpg"})
  return records


def test_single_core_reports_rates_and_stage_shares():
  options = T.Options(image_size=16, hflip=0.5, rotate=25, brightness=0.2, contrast=0.2,
                      saturation=0.2, hue=0.05, crop_to_bbox=True)
  result = input_benchmark.single_core(_records(), options, n=6)
  assert result["train_img_s"] > 0 and result["eval_img_s"] > 0
  assert set(result["train_stage_share"]) == {"decode", "warp", "colour", "array"}
  assert sum(result["train_stage_share"].values()) == pytest.approx(1.0)


def test_dispatcher_lists_input_and_rejects_unknown_names():
  assert "input" in benchmark.subcommands()
  with pytest.raises(SystemExit, match="usage"):
    benchmark.main(["benchmark", "nope"])
