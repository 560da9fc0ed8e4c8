"""A finished demo run for the predict, evaluate and export tests, trained once per test
session (the first module that asks trains it; the others, in any pytest-xdist worker,
wait for it and reuse its folder).

32 px, one epoch, XLA's depthwise convolution (test_train_e2e's FAST settings), and the TF
classifier init rather than the demo's zeros: after one epoch the logits then depend on the
image, so predictions that prepare images differently would disagree.
"""

from __future__ import annotations

import fcntl
import json
import os

import pytest

from test_train_e2e import demo_config  # pylint: disable=g-bad-import-order

# Original storage: the records hold the JPEG files, which the predict tests write out as
# image files (decoded storage would hold pixels).
OVERRIDES = {"train.num_epochs": 1, "model.head_init": "tf", "data.storage": "original"}


def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
  """(workdir, results.json) of the session's finished demo run."""
  from efficientnet_jax import train  # pylint: disable=g-import-not-at-top

  base = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):  # Workers' folders share this session's parent.
    base = base.parent
  root = base / "finished_demo_run"
  root.mkdir(exist_ok=True)
  workdir = root / "run"
  with open(root / "lock", "w") as lock:  # One trains; the others wait for its results.
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (workdir / "results.json").exists():
      previous = os.environ.get("EFFICIENTNET_JAX_DEMO_DATA")
      os.environ["EFFICIENTNET_JAX_DEMO_DATA"] = str(root / "data")
      try:
        train.train_and_evaluate(demo_config(**OVERRIDES), str(workdir))
      finally:
        if previous is None:
          del os.environ["EFFICIENTNET_JAX_DEMO_DATA"]
        else:
          os.environ["EFFICIENTNET_JAX_DEMO_DATA"] = previous
  with open(workdir / "results.json") as f:
    return str(workdir), json.load(f)
