"""EfficientNetV2: the official stage tables, exact parameter counts, Fused-MBConv blocks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from efficientnet_jax.models import ARCHS, create_model, specs, summary
from efficientnet_jax.models.blocks import FusedMBConv, MBConv

V2_ARCHS = [a for a in ARCHS if a.startswith("v2_")]

# Parameters of timm 1.0's tf_efficientnetv2_* with 1000 and 196 classes (timm.create_model,
# sum of parameter sizes).
TIMM_PARAMS = {
    "v2_b0": (7_139_704, 6_109_780), "v2_b1": (8_141_052, 7_111_128),
    "v2_b2": (10_096_086, 8_963_250), "v2_b3": (14_358_406, 13_122_658),
    "v2_s": (21_458_488, 20_428_564), "v2_m": (54_139_356, 53_109_432),
    "v2_l": (118_515_272, 117_485_348), "v2_xl": (208_119_808, 207_089_884),
}
# The official networks (timm's modules): stem, blocks per stage, stage widths, head.
OFFICIAL_TABLES = {
    "v2_b0": (32, (1, 2, 2, 3, 5, 8), (16, 32, 48, 96, 112, 192), 1280),
    "v2_b1": (32, (2, 3, 3, 4, 6, 9), (16, 32, 48, 96, 112, 192), 1280),
    "v2_b2": (32, (2, 3, 3, 4, 6, 10), (16, 32, 56, 104, 120, 208), 1408),
    "v2_b3": (40, (2, 3, 3, 5, 7, 12), (16, 40, 56, 112, 136, 232), 1536),
    "v2_s": (24, (2, 4, 4, 6, 9, 15), (24, 48, 64, 128, 160, 256), 1280),
    "v2_m": (24, (3, 5, 5, 7, 14, 18, 5), (24, 48, 80, 160, 176, 304, 512), 1280),
    "v2_l": (32, (4, 7, 7, 10, 19, 25, 7), (32, 64, 96, 192, 224, 384, 640), 1280),
    "v2_xl": (32, (4, 8, 8, 16, 24, 32, 8), (32, 64, 96, 192, 256, 512, 640), 1280),
}


@pytest.mark.parametrize("arch", V2_ARCHS)
def test_parameter_counts_equal_timm(arch):
  params_1000, params_196 = TIMM_PARAMS[arch]
  assert summary.count_params(nnx.eval_shape(lambda: create_model(arch))) == params_1000
  # A 196-class head has (head channels + 1) x 804 parameters fewer.
  assert params_1000 - (specs.head_channels(ARCHS[arch]) + 1) * 804 == params_196


@pytest.mark.parametrize("arch", V2_ARCHS)
def test_stage_tables_follow_the_official_models(arch):
  spec = ARCHS[arch]
  stem, repeats, widths, head = OFFICIAL_TABLES[arch]
  blocks = specs.build_blocks(spec, drop_connect_rate=0.2)
  assert (specs.stem_channels(spec), specs.head_channels(spec)) == (stem, head)
  assert tuple(specs.stage_repeats(spec)) == repeats
  assert tuple(b.out_channels for b in blocks if b.index == 0) == widths
  for b in blocks:
    # Fused-MBConv in the first three stages, without squeeze-excite; MBConv with SE of a
    # quarter of the block's input channels after them.
    assert b.block == (specs.FUSED_MBCONV if b.stage < 3 else specs.MBCONV)
    assert b.se_channels == (0 if b.stage < 3 else b.in_channels // 4)
    assert b.kernel == 3 and b.expand_ratio == (1 if b.stage == 0 else 4 if b.stage < 4 else 6)


def test_fused_blocks_have_one_kxk_conv_and_the_official_skips():
  model = nnx.eval_shape(lambda: create_model("v2_s", num_classes=10))
  first = model.stages_0_0  # Expand ratio 1: the kxk conv goes straight to 24 channels.
  assert isinstance(first, FusedMBConv) and first.project_conv is None
  assert first.fused_conv.kernel.shape == (3, 3, 24, 24) and first.has_skip
  expanding = model.stages_1_0  # 3x3/2 to 4 x 24 channels, then 1x1 to 48; no skip.
  assert expanding.fused_conv.kernel.shape == (3, 3, 24, 96) and expanding.fused_conv.stride == 2
  assert expanding.project_conv.kernel.shape == (96, 48) and not expanding.has_skip
  assert not hasattr(expanding, "dw_conv") and not hasattr(expanding, "se")
  assert isinstance(model.stages_3_0, MBConv) and model.stages_3_0.se.reduce.kernel.shape == (256, 16)
  # Drop-connect on every skip block, the fused ones included (not the very first block).
  for spec, block in zip(model.block_specs, model.blocks):
    assert (block.drop_path is not None) == (spec.has_skip and spec.index + spec.stage > 0)
  b0 = nnx.eval_shape(lambda: create_model("v2_b0", num_classes=10))
  assert not b0.stages_0_0.has_skip  # 32 -> 16 channels.


def test_fused_conv_forms_agree_and_the_model_picks_per_mode():
  """im2col (training on CPU) and XLA's convolution (evaluation) give the same block: a
  3x3/2 fused conv 16 -> 64 channels on 16 px (TF padding (0, 1)), then 1x1 to 32."""
  spec = specs.build_blocks(ARCHS["v2_b0"], drop_connect_rate=0.0)[1]
  model = create_model("v2_b0", num_classes=10)
  block = model.stages_1_0
  assert (spec.name, spec.in_channels, spec.stride) == ("stages_1_0", 16, 2)
  block.eval()
  assert not block.uses_im2col()
  block.train()
  assert block.uses_im2col()
  # Without expansion (B0's 32 -> 16, S's 24 -> 24): XLA's convolution in training too.
  for unexpanded in (model.stages_0_0, nnx.eval_shape(lambda: create_model("v2_s")).stages_0_0):
    unexpanded.train()
    assert not unexpanded.uses_im2col()
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 16))

  @nnx.jit
  def value_and_grads(block, x):
    return nnx.value_and_grad(lambda b, x: jnp.sum(jnp.sin(b(x))), argnums=(0, 1))(block, x)

  results = []
  for form in ("xla", "im2col"):
    block.conv_form = form
    value, (d_block, d_x) = value_and_grads(block, x)
    results.append((value, d_block.fused_conv.kernel[...], d_x))
  for got, want in zip(*results):  # Kernel gradients sum 2 x 8 x 8 x 16 products.
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_summary_lists_v2_with_flops_near_the_papers():
  row = summary.summarize("v2_b0")
  assert (row.resolution, row.params_1000, row.params_196) == (224, *TIMM_PARAMS["v2_b0"])
  # The EfficientNetV2 paper (Table 7): B0 has 0.72B FLOPs (multiply-adds) at 224 px.
  assert 0.72e9 <= row.flops / 2 <= 1.1 * 0.72e9
