"""EfficientNet structure, modes, padding, depthwise implementations, dtypes."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from efficientnet_jax.models import ARCHS, create_model, depthwise, layers, specs, summary

B_ARCHS = [f"b{i}" for i in range(8)]
LITE_ARCHS = [f"lite{i}" for i in range(5)]
V1_ARCHS = B_ARCHS + LITE_ARCHS  # EfficientNetV2 has its own tests (test_models_v2.py).

# Published parameter counts (millions, 1000 classes) of timm's tf_efficientnet_* models.
PUBLISHED_PARAMS_M = {
    "b0": 5.29, "b1": 7.79, "b2": 9.11, "b3": 12.23, "b4": 19.34, "b5": 30.39, "b6": 43.04,
    "b7": 66.35, "lite0": 4.65, "lite1": 5.42, "lite2": 6.09, "lite3": 8.20, "lite4": 13.01,
}
# Channel tables of the official models: stem, stage outputs, head.
PUBLISHED_CHANNELS = {
    "b3": (40, (24, 32, 48, 96, 136, 232, 384), 1536),
    "b4": (48, (24, 32, 56, 112, 160, 272, 448), 1792),
    "b7": (64, (32, 48, 80, 160, 224, 384, 640), 2560),
}


def _reference_round_filters(f: int, width: float) -> int:
  """DESIGN.md's rule, written out independently of the model code."""
  f = f * width
  new = max(8, int(f + 4) // 8 * 8)
  return new + 8 if new < 0.9 * f else new


def _images(n=2, size=32, channels=3, seed=0):
  return jax.random.normal(jax.random.key(seed), (n, size, size, channels))


forward = nnx.jit(lambda model, x: model(x))


@pytest.mark.parametrize("name", list(ARCHS))
def test_every_variant_traces_to_its_logits_in_both_modes(name):
  """The whole forward of every variant, traced with abstract weights (the numbers: below)."""
  model = nnx.eval_shape(lambda: create_model(name, num_classes=7, depthwise="conv"))
  for mode in ("eval", "train"):
    getattr(model, mode)()
    graphdef, state = nnx.split(model)
    y = jax.eval_shape(lambda s, x, g=graphdef: nnx.merge(g, s)(x), state, _images())
    assert (y.shape, y.dtype) == ((2, 7), jnp.float32), (name, mode)


# One variant of each block kind: MBConv with SE and swish, Lite's without SE and with
# ReLU6, V2's Fused-MBConv stages.
@pytest.mark.parametrize("name", ["b0", "lite0", "v2_b0"])
def test_each_block_kind_runs_in_both_modes(name):
  model = create_model(name, num_classes=7, depthwise="conv")
  x = _images()
  model.eval()
  y_eval = forward(model, x)
  stats_before = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
  model.train()
  y_train = forward(model, x)
  for y in (y_eval, y_train):
    assert y.shape == (2, 7) and y.dtype == jnp.float32
    assert np.isfinite(np.asarray(y)).all()
  # Training mode normalises with batch statistics and updates the running averages.
  assert not np.allclose(y_eval, y_train)
  # (Running means after a bias-free linear layer of BN-normalised input stay ~0, so the
  # check is on variances.)
  stats_after = nnx.state(model, nnx.BatchStat)
  var_changed = [not np.allclose(before, np.asarray(after))
                 for (path, before), (_, after) in zip(stats_before.flat_state(), stats_after.flat_state())
                 if path[-1] == "var"]
  assert len(var_changed) > 10 and all(var_changed)


@pytest.mark.parametrize("name", V1_ARCHS)
def test_parameter_counts_match_published(name):
  assert round(summary.count_params(create_model(name)) / 1e6, 2) == PUBLISHED_PARAMS_M[name]


@pytest.mark.parametrize("name", B_ARCHS)
def test_scaling_rules(name):
  spec = ARCHS[name]
  model = create_model(name, num_classes=10)
  blocks = model.block_specs
  # Repeats follow ceil(depth * r), channels round_filters(c * width), stride only on block 0.
  for i, stage in enumerate(specs.EFFICIENTNET.stages):
    stage_blocks = [b for b in blocks if b.stage == i]
    assert len(stage_blocks) == math.ceil(spec.depth * stage.repeats)
    assert all(b.block == stage.block == "mbconv" for b in stage_blocks)
    out = _reference_round_filters(stage.out_channels, spec.width)
    for b in stage_blocks:
      block = getattr(model, b.name)
      assert block.project_conv.kernel.shape[-1] == out
      assert block.dw_conv.kernel.shape[:2] == (stage.kernel, stage.kernel)
      assert block.dw_conv.stride == (stage.stride if b.index == 0 else 1)
      # SE squeezes to a quarter of the block's *input* channels.
      assert block.se.reduce.kernel.shape == (b.in_channels * stage.expand_ratio,
                                              max(1, int(b.in_channels * 0.25)))
  assert model.stem.conv.kernel.shape[-1] == _reference_round_filters(32, spec.width)
  assert model.head.conv.kernel.shape[-1] == _reference_round_filters(1280, spec.width)
  if name in PUBLISHED_CHANNELS:
    stem, stages, head = PUBLISHED_CHANNELS[name]
    assert model.stem.conv.kernel.shape[-1] == stem
    assert tuple(b.out_channels for b in blocks if b.index == 0) == stages
    assert model.head.conv.kernel.shape[-1] == head


def test_drop_connect_grows_linearly_and_only_on_skip_blocks():
  model = create_model("b3", drop_connect_rate=0.2)
  n = len(model.block_specs)
  rates = [b.drop_connect for b in model.block_specs]
  np.testing.assert_allclose(rates, 0.2 * np.arange(n) / n, rtol=0, atol=1e-12)
  for spec, block in zip(model.block_specs, model.blocks):
    assert (block.drop_path is not None) == (spec.has_skip and spec.drop_connect > 0)
    if block.drop_path is not None:
      assert block.drop_path.rate == spec.drop_connect


def test_drop_path_drops_whole_examples_in_training_only():
  drop = layers.DropPath(0.5, rngs=nnx.Rngs(dropout=0))
  x = jnp.ones((64, 2, 2, 3))
  y = np.asarray(drop(x))
  per_example = y.reshape(64, -1)
  assert set(np.unique(per_example)) <= {0.0, 2.0}
  assert (per_example == per_example[:, :1]).all()  # All-or-nothing per example.
  assert 10 < (per_example[:, 0] == 0).sum() < 54
  drop.deterministic = True
  np.testing.assert_array_equal(drop(x), x)


@pytest.mark.parametrize("name", LITE_ARCHS)
def test_lite_has_relu6_no_se_and_fixed_stem_head(name):
  model = create_model(name, num_classes=10)
  assert all(block.se is None for block in model.blocks)
  assert model.stem.conv.kernel.shape[-1] == 32 and model.head.conv.kernel.shape[-1] == 1280
  stage_repeats = [sum(b.stage == i for b in model.block_specs) for i in range(7)]
  assert stage_repeats[0] == 1 and stage_repeats[-1] == 1  # First/last stage not depth-scaled.
  model.eval()
  stem_out = np.asarray(model.stem(100.0 * _images()))
  assert stem_out.min() >= 0.0 and stem_out.max() == pytest.approx(6.0)  # ReLU6 saturates.


def test_b_variants_use_swish():
  model = create_model("b0", num_classes=10)
  model.eval()
  stem_out = np.asarray(model.stem(100.0 * _images()))
  assert stem_out.min() < 0.0 and stem_out.max() > 6.0


def test_pad_amounts_follow_tf_same_and_torch_symmetric():
  assert layers.pad_amounts(224, 3, 2, "same") == (0, 1)  # Extra pixel bottom/right.
  assert layers.pad_amounts(112, 5, 2, "same") == (1, 2)
  assert layers.pad_amounts(225, 3, 2, "same") == (1, 1)
  assert layers.pad_amounts(56, 5, 1, "same") == (2, 2)
  assert layers.pad_amounts(224, 5, 2, "symmetric") == (2, 2)
  with pytest.raises(ValueError, match="model.padding"):
    layers.pad_amounts(224, 3, 2, "valid")


@pytest.mark.parametrize("impl", ["conv", "shifted", "native"])
def test_padding_modes_differ_only_for_stride_two(impl):
  x = _images(size=16, channels=8)
  for stride, should_match in ((1, True), (2, False)):
    outs = []
    for padding in ("same", "symmetric"):
      conv = depthwise.DepthwiseConv(8, 3, stride, padding=padding, impl=impl, dtype=jnp.float32,
                                  init=np.random.default_rng(0))
      outs.append(np.asarray(conv(x)))
    assert outs[0].shape == outs[1].shape
    assert np.allclose(outs[0], outs[1], atol=1e-6) == should_match
  full = [layers.Conv(8, 4, 3, 2, padding=p, dtype=jnp.float32, init=np.random.default_rng(0))(x)
          for p in ("same", "symmetric")]
  assert not np.allclose(full[0], full[1], atol=1e-6)


@pytest.mark.parametrize("padding,stride", [("same", 2), ("symmetric", 2), ("same", 1)])
def test_stem_conv_as_im2col_matmul_matches_xla_convolution(padding, stride):
  x = _images(n=2, size=17, channels=3, seed=7)
  conv = layers.Conv(3, 8, 3, stride, padding=padding, dtype=jnp.float32,
                     init=np.random.default_rng(0))

  def loss(conv, x):
    return jnp.sum(jnp.sin(conv(x)))

  results = []
  for im2col in (False, True):
    conv.im2col = im2col
    d_conv, d_x = nnx.grad(loss, argnums=(0, 1))(conv, x)
    results.append((conv(x), d_conv.kernel[...], d_x))
  for got, want in zip(results[1], results[0]):  # Kernel gradients sum ~600 terms.
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_whole_model_padding_option_changes_logits():
  x = _images()
  outs = []
  for padding in ("same", "symmetric"):
    model = create_model("b0", num_classes=5, padding=padding)
    model.eval()
    outs.append(np.asarray(forward(model, x)))
  assert not np.allclose(outs[0], outs[1], atol=1e-5)


@pytest.mark.parametrize("impl", ["shifted", "native"])
@pytest.mark.parametrize("kernel,stride,padding,channels,size", [
    (3, 1, "same", 6, 15), (3, 2, "same", 84, 15), (5, 2, "same", 6, 15),
    (5, 2, "symmetric", 84, 15), (5, 1, "symmetric", 6, 15), (5, 2, "same", 6, 2),
    (5, 1, "symmetric", 6, 2), (3, 2, "symmetric", 6, 1)])
def test_depthwise_impls_match_xla_conv_and_gradients(impl, kernel, stride, padding, channels,
                                                      size):
  """84 channels = one 64-wide, one 16-wide and one partial block of the native kernel; sizes
  1 and 2 leave kernel taps entirely outside the image (B0 at 32 px ends at 1x1)."""
  x = _images(n=2, size=size, channels=channels, seed=1)
  w = jax.random.normal(jax.random.key(2), (kernel, kernel, 1, channels))

  def loss(w, x, impl):
    return jnp.sum(jnp.sin(depthwise.depthwise_conv(x, w, stride, padding, impl)))

  np.testing.assert_allclose(depthwise.depthwise_conv(x, w, stride, padding, impl),
                             depthwise.depthwise_conv(x, w, stride, padding, "conv"),
                             rtol=1e-5, atol=1e-5)
  g_ref = jax.grad(loss, argnums=(0, 1))(w, x, "conv")
  g_new = jax.grad(loss, argnums=(0, 1))(w, x, impl)
  for a, b in zip(g_new, g_ref):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("impl", ["shifted", "native"])
def test_depthwise_in_bfloat16_accumulates_in_float32(impl):
  x = _images(n=2, size=16, channels=8, seed=3)
  w = jax.random.normal(jax.random.key(4), (5, 5, 1, 8)) * 0.2
  reference = depthwise.depthwise_conv(x, w, 1, "same", "conv")
  out = depthwise.depthwise_conv(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), 1, "same", impl)
  assert out.dtype == jnp.bfloat16
  # Inputs rounded to bf16 (rel 2^-9) and one final rounding; a bf16 running sum of 25 taps
  # would add up to 25 roundings.
  np.testing.assert_allclose(np.asarray(out, np.float32), reference, rtol=0.02, atol=0.03)


@pytest.mark.parametrize("stride", [1, 2])
def test_shifted_depthwise_backward_holds_one_window_at_a_time(stride):
  """Regression: XLA kept all k*k input windows alive for the weight gradient (25x x)."""
  x = jnp.ones((8, 32, 32, 64))
  w = jnp.ones((5, 5, 1, 64))
  grad = jax.jit(jax.grad(
      lambda w, x: jnp.sum(jnp.sin(depthwise.depthwise_conv(x, w, stride, "same", "shifted"))),
      argnums=(0, 1)))
  temp = grad.lower(w, x).compile().memory_analysis().temp_size_in_bytes
  assert temp < 6 * x.nbytes, f"backward temporaries {temp / x.nbytes:.1f}x the input"


def _plain_batch_norm_act(x, scale, bias, eps):
  mean = jnp.mean(x, (0, 1, 2))
  var = jnp.var(x, (0, 1, 2))
  return jax.nn.silu((x - mean) / jnp.sqrt(var + eps) * scale + bias), mean, var


@pytest.mark.parametrize("size", [2, 8])
def test_gated_dense_matches_gating_the_input(size):
  """The squeeze-excite gate folded into per-example kernels (8x8 pixels >= 16 * 3 outputs)
  or multiplied into x (2x2) gives the same values and gradients as self(x * gate)."""
  dense = layers.Dense(6, 3, use_bias=True, dtype=jnp.float32, init=np.random.default_rng(0))
  dense.bias.value = jnp.arange(3.0)
  x = jax.random.normal(jax.random.key(0), (2, size, size, 6))
  gate = jax.random.uniform(jax.random.key(1), (2, 1, 1, 6))

  def loss(fn):
    return lambda dense, x, gate: jnp.sum(jnp.sin(fn(dense, x, gate)))

  gated = lambda dense, x, gate: dense.gated(x, gate, fold=True)
  plain = lambda dense, x, gate: dense(x * gate)
  np.testing.assert_allclose(gated(dense, x, gate), plain(dense, x, gate), rtol=1e-5, atol=1e-6)
  got = nnx.grad(loss(gated), argnums=(0, 1, 2))(dense, x, gate)
  want = nnx.grad(loss(plain), argnums=(0, 1, 2))(dense, x, gate)
  np.testing.assert_allclose(got[0].kernel[...], want[0].kernel[...], rtol=1e-5, atol=1e-5)
  for a, b in zip(got[1:], want[1:]):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_batchnorm_with_activation_matches_plain_autodiff_and_updates_statistics():
  x = _images(n=4, size=6, channels=5, seed=5) * 3 + 1
  bn = layers.BatchNorm(5, momentum=0.9, epsilon=1e-3)
  bn.scale.value = jnp.linspace(0.5, 2.0, 5)
  bn.bias.value = jnp.linspace(-1.0, 1.0, 5)
  cotangent = jax.random.normal(jax.random.key(6), x.shape)

  def ours(bn, x):
    return jnp.sum(bn(x, jax.nn.silu) * cotangent)

  def plain(x, scale, bias):
    return jnp.sum(_plain_batch_norm_act(x, scale, bias, 1e-3)[0] * cotangent)

  args = (x, bn.scale[...], bn.bias[...])
  expected_out, expected_mean, expected_var = _plain_batch_norm_act(*args, 1e-3)
  np.testing.assert_allclose(bn(x, jax.nn.silu), expected_out, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(bn.mean[...], 0.1 * expected_mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(bn.var[...], 0.9 + 0.1 * expected_var, rtol=1e-5)
  param_grads, x_grad = nnx.grad(ours, argnums=(0, 1))(bn, x)
  want = jax.grad(plain, argnums=(0, 1, 2))(*args)
  for got, expected in zip((x_grad, param_grads["scale"][...], param_grads["bias"][...]), want):
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)

def test_bfloat16_training_saves_no_float32_activations(capsys):
  """The backward keeps activations in bf16: float32 math stays inside fused elementwise ops."""
  model = create_model("b0", num_classes=10, dtype="bfloat16")
  model.train()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(params, rest, x):
    return jnp.sum(nnx.merge(graphdef, params, rest)(x).astype(jnp.float32))

  jax.ad_checkpoint.print_saved_residuals(loss, params, rest, _images(size=64))
  saved = capsys.readouterr().out.splitlines()
  assert any(line.startswith("bf16[2,32,32,") for line in saved)  # The listing is parsed.
  float32_maps = [line for line in saved if re.match(r"f32\[\d+,(\d+),(\d+),\d+\]", line)
                  and not re.match(r"f32\[\d+,1,1,", line) and "argument" not in line]
  assert not float32_maps, float32_maps


def test_auto_depthwise_per_backend_and_bad_names_fail():
  assert depthwise.resolve("auto", "cpu", 1) == "native"
  assert depthwise.resolve("auto", "cpu", 8) == "shifted"  # XLA cannot shard the custom call.
  assert depthwise.resolve("auto", "gpu", 1) == "conv"
  assert create_model("b0").opts.depthwise == "native"  # The backend, read once by the model.
  with pytest.raises(ValueError, match="model.depthwise"):
    depthwise.resolve("fast", "cpu", 1)
  with pytest.raises(ValueError, match="CPU kernel"):
    depthwise.resolve("native", "gpu", 1)


def test_auto_depthwise_falls_back_to_shifted_without_the_native_kernel(monkeypatch, caplog):
  monkeypatch.setattr(depthwise.native, "unavailable_reason", lambda: "no C++ compiler")
  assert depthwise.resolve("auto", "cpu", 1) == "shifted"
  assert "no C++ compiler" in caplog.text
  with pytest.raises(depthwise.native.NativeBuildError, match="no C\\+\\+ compiler"):
    depthwise.resolve("native", "cpu", 1)


def test_frozen_batchnorm_keeps_statistics_in_training_mode():
  model = create_model("b0", num_classes=5, freeze_bn=True)
  model.train()
  before = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
  y_train = forward(model, _images())
  after = nnx.state(model, nnx.BatchStat)
  jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, after))
  # With dropout and drop-path off, frozen-BN training equals evaluation.
  model_nodrop = create_model("b0", num_classes=5, freeze_bn=True, dropout_rate=0.0,
                              drop_connect_rate=0.0)
  model_nodrop.train()
  y_frozen = forward(model_nodrop, _images())
  model_nodrop.eval()
  np.testing.assert_allclose(y_frozen, forward(model_nodrop, _images()), rtol=1e-5, atol=1e-5)
  assert np.isfinite(np.asarray(y_train)).all()


def test_grayscale_input():
  model = create_model("b0", num_classes=3, in_channels=1)
  model.eval()
  assert model.stem.conv.kernel.shape == (3, 3, 1, 32)
  y = forward(model, _images(channels=1))
  assert y.shape == (2, 3) and np.isfinite(np.asarray(y)).all()


@pytest.mark.parametrize("name", ["b0", "lite0"])
def test_bfloat16_is_finite_and_close_to_float32(name):
  x = _images(n=4, size=64)
  ref, low = (create_model(name, num_classes=10, dtype=d) for d in ("float32", "bfloat16"))
  for model in (ref, low):
    model.eval()
  # Same seed -> the same float32 parameters; only the compute dtype differs.
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(low, nnx.Param)))
  y32, y16 = np.asarray(forward(ref, x)), np.asarray(forward(low, x))
  assert y16.dtype == np.float32 and np.isfinite(y16).all()
  scale = np.abs(y32).max()
  assert np.abs(y16 - y32).max() <= 0.05 * scale
  assert (y16.argmax(-1) == y32.argmax(-1)).mean() >= 0.75


def test_bad_options_name_the_config_field():
  with pytest.raises(ValueError, match="model.arch"):
    create_model("b9")
  with pytest.raises(ValueError, match="model.dtype"):
    create_model("b0", dtype="float16")
  with pytest.raises(ValueError, match="model.in_channels"):
    create_model("b0", in_channels=4)
  with pytest.raises(ValueError, match="model.padding"):
    create_model("b0", padding="valid")


def test_remat_gives_the_same_loss_gradients_and_batch_stats():
  x = _images(n=4)
  results = []
  for remat in (False, True):
    model = create_model("b0", num_classes=5, remat=remat, dropout_rate=0.0, drop_connect_rate=0.0)
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params, rest):
      m = nnx.merge(graphdef, params, rest, copy=True)
      value = jnp.mean(m(x) ** 2)
      return value, nnx.state(m, nnx.BatchStat)

    (value, stats), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params, rest)
    results.append((value, grads, stats))
  (v0, g0, s0), (v1, g1, s1) = results
  np.testing.assert_allclose(v0, v1, rtol=1e-5)
  # Some gradients are exactly zero in theory (a BN shift followed by another BN); their
  # float noise differs with recomputation, so the tolerance is relative to the largest.
  atol = 1e-3 * max(float(jnp.abs(g).max()) for g in jax.tree.leaves(g0))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=atol), g0, g1)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), s0, s1)


@pytest.mark.parametrize("head_init,bound", [("tf", 10**-0.5), ("torch", 1280**-0.5), ("zeros", 0.0)])
def test_classifier_initializations(head_init, bound):
  classifier = create_model("b0", num_classes=10, head_init=head_init).classifier
  kernel, bias = np.asarray(classifier.kernel[...]), np.asarray(classifier.bias[...])
  assert np.abs(kernel).max() <= bound
  assert np.abs(kernel).max() >= 0.95 * bound  # Uses the whole range (10k draws).
  if head_init == "torch":  # nn.Linear draws its bias from the kernel's range too.
    assert np.abs(bias).max() <= bound and len(set(bias.tolist())) == 10
  else:
    assert not bias.any()
  with pytest.raises(ValueError, match="model.head_init"):
    create_model("b0", head_init="xavier")
