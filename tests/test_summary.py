"""The model summary command: parameter counts and XLA-counted FLOPs."""

import pytest
from absl import app

from efficientnet_jax.models import summary

# EfficientNet paper (Tan & Le, 2019), Table 2: B0 has 5.3M parameters and 0.39B
# multiply-adds at 224 px. XLA also counts BatchNorm, activations and SE elementwise work.
PAPER_B0_MACS = 0.39e9


def test_b0_summary_matches_the_paper():
  row = summary.summarize("b0")
  assert row.resolution == 224
  assert row.params_1000 == 5_288_548
  # The 1000- vs 196-class difference is exactly the classifier's (1280 + 1) * 804 weights.
  assert row.params_1000 - row.params_196 == (1280 + 1) * (1000 - 196)
  assert PAPER_B0_MACS <= row.flops / 2 <= 1.1 * PAPER_B0_MACS
  table = summary.format_table([row])
  assert "b0" in table and "5,288,548" in table and "4,258,624" in table


def test_flops_grow_with_resolution():
  model = summary.create_model("lite0", depthwise="conv")
  small, large = summary.forward_flops(model, 112), summary.forward_flops(model, 224)
  assert 3.5 < large / small < 4.5


def test_unknown_variant_flag_is_a_usage_error():
  summary.flags.FLAGS(["summary", "--archs=b0,b9"])
  try:
    with pytest.raises(app.UsageError, match="b9"):
      summary.main([])
  finally:
    summary.flags.FLAGS.unparse_flags()
