"""The native C++ depthwise kernel: building, caching, errors, determinism, dtypes."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from efficientnet_jax import native
from efficientnet_jax.models import depthwise, layers
from efficientnet_jax.native import build


def test_library_is_cached_per_source_and_rebuilt_into_a_fresh_cache(tmp_path, monkeypatch):
  monkeypatch.setenv(build.CACHE_ENV, str(tmp_path))
  first = build.library_path()
  assert first.parent == tmp_path and first.suffix == ".so"
  mtime = first.stat().st_mtime_ns
  assert build.library_path() == first and first.stat().st_mtime_ns == mtime  # Not rebuilt.
  assert [p.name for p in tmp_path.iterdir()] == [first.name]  # No temporary files left.


def test_cache_falls_back_to_the_temp_dir_when_home_is_not_writable(tmp_path, monkeypatch):
  monkeypatch.delenv(build.CACHE_ENV, raising=False)
  not_a_dir = tmp_path / "file"
  not_a_dir.write_text("")
  monkeypatch.setenv("HOME", str(not_a_dir))  # ~/.cache cannot be created under a file.
  monkeypatch.setattr(build.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
  assert build._cache_dir().is_relative_to(tmp_path / "tmp")


def test_missing_compiler_names_the_fix(tmp_path, monkeypatch):
  monkeypatch.setenv(build.CACHE_ENV, str(tmp_path))
  monkeypatch.setenv("CXX", "no-such-compiler-efficientnet")
  with pytest.raises(native.NativeBuildError, match=r"\$CXX.*model.depthwise='shifted'"):
    build.library_path()


def test_failed_compile_reports_the_command_and_leaves_no_library(tmp_path, monkeypatch):
  monkeypatch.setenv(build.CACHE_ENV, str(tmp_path))
  monkeypatch.setenv("CXX", "false")  # Exits 1 like a compiler error.
  with pytest.raises(native.NativeBuildError, match=r"Building .*depthwise.cc failed"):
    build.library_path()
  assert list(tmp_path.iterdir()) == []


def _inputs(dtype=jnp.float32, n=3, size=13, channels=40, kernel=5):
  x = jax.random.normal(jax.random.key(0), (n, size, size, channels)).astype(dtype)
  w = jax.random.normal(jax.random.key(1), (kernel, kernel, 1, channels)).astype(dtype)
  return x, w


def test_kernel_gradient_is_bitwise_reproducible():
  """Per-chunk partial sums are added in a fixed order, whatever thread ran which chunk."""
  x, w = _inputs(n=8, size=32)
  grad = jax.jit(jax.grad(
      lambda w, x: jnp.sum(jnp.sin(depthwise.depthwise_conv(x, w, 2, "same", "native")))))
  first = np.asarray(grad(w, x))
  for _ in range(3):
    np.testing.assert_array_equal(np.asarray(grad(w, x)), first)


def test_bfloat16_gradients_keep_the_dtypes_and_match_float32():
  x, w = _inputs()

  def grads(x, w):
    return jax.grad(lambda x, w: jnp.sum(
        depthwise.depthwise_conv(x, w, 1, "same", "native").astype(jnp.float32) ** 2),
        argnums=(0, 1))(x, w)

  dx16, dw16 = grads(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
  dx32, dw32 = grads(x, w)
  assert dx16.dtype == dw16.dtype == jnp.bfloat16
  # bf16 inputs and output (2^-9 relative each): a few percent of the gradients' scale.
  np.testing.assert_allclose(np.asarray(dx16, np.float32), dx32, atol=0.05 * np.abs(dx32).max())
  np.testing.assert_allclose(np.asarray(dw16, np.float32), dw32, atol=0.02 * np.abs(dw32).max())


def test_vmap_over_an_extra_batch_axis_matches_a_loop():
  x, w = _inputs(n=2)
  xs = jnp.stack([x, 2 * x])
  out = jax.vmap(lambda x: depthwise.depthwise_conv(x, w, 2, "same", "native"))(xs)
  for i in range(2):
    np.testing.assert_allclose(out[i], depthwise.depthwise_conv(xs[i], w, 2, "same", "conv"),
                               rtol=1e-5, atol=1e-5)


def test_unsupported_dtype_is_a_clear_error():
  x, w = _inputs(dtype=jnp.float16)
  with pytest.raises(Exception, match="float32 and bfloat16 only"):
    jax.block_until_ready(depthwise.depthwise_conv(x, w, 1, "same", "native"))


def test_kernels_over_16_name_the_other_implementations():
  x = jnp.zeros((1, 20, 20, 4))
  w = jnp.zeros((17, 17, 1, 4))
  with pytest.raises(Exception, match="kernel size over 16; use model.depthwise='shifted'"):
    jax.block_until_ready(depthwise.depthwise_conv(x, w, 1, "same", "native"))


def _running_batch_norm(channels: int, rng: np.random.Generator) -> layers.BatchNorm:
  bn = layers.BatchNorm(channels, momentum=0.99, epsilon=1e-3)
  bn.mean.value = jnp.asarray(rng.standard_normal(channels), jnp.float32)
  bn.var.value = jnp.asarray(rng.uniform(0.5, 2.0, channels), jnp.float32)
  bn.scale.value = jnp.asarray(rng.uniform(0.5, 2.0, channels), jnp.float32)
  bn.bias.value = jnp.asarray(rng.standard_normal(channels), jnp.float32)
  bn.use_running_average = True
  return bn


@pytest.mark.parametrize("activation,stride,kernel,batch,input_bn", [
    ("swish", 1, 3, 2, False), ("relu6", 2, 3, 2, False), ("swish", 1, 5, 1, True),
    ("relu6", 2, 3, 2, True), ("swish", 2, 5, 1, True)])
def test_inference_batchnorm_and_activation_fused_into_the_kernel(activation, stride, kernel,
                                                                  batch, input_bn):
  """Eval-mode (or frozen) BatchNorm + activation computed on the kernel's sums, and the
  previous layer's BatchNorm + activation applied to the rows it reads (a ring of rows per
  task; one image is split over several tasks), equal the separate ops; gradients (saliency
  maps, frozen-BN training) match too."""
  x = jax.random.normal(jax.random.key(0), (batch, 13, 12, 24))

  def layer(impl):
    rng = np.random.default_rng(1)
    conv = depthwise.DepthwiseConv(24, kernel, stride, padding="same", impl=impl,
                                dtype=jnp.float32, init=rng)
    return conv, _running_batch_norm(24, rng), _running_batch_norm(24, rng)

  def forward(conv, bn, in_bn, x):
    return conv.with_batch_norms(x, before=in_bn if input_bn else None, after=bn,
                                 activation=activation)

  def loss(conv, bn, in_bn, x):
    return jnp.sum(jnp.sin(forward(conv, bn, in_bn, x)))

  results = {}
  for impl in ("conv", "native"):
    conv, bn, in_bn = layer(impl)
    d_conv, d_bn, d_in_bn, d_x = nnx.grad(loss, argnums=(0, 1, 2, 3))(conv, bn, in_bn, x)
    results[impl] = (forward(conv, bn, in_bn, x), d_conv.kernel[...], d_bn.scale[...],
                     d_bn.bias[...], d_in_bn.scale[...], d_in_bn.bias[...], d_x)
  for got, want in zip(results["native"], results["conv"]):
    # Float32 sums in another order: kernel gradients add up to ~150 terms of magnitude ~50.
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
  if not input_bn:
    assert not np.any(results["native"][4])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("kernel,stride,padding", [(3, 1, "same"), (5, 2, "same"),
                                                   (3, 2, "symmetric")])
def test_input_transform_ring_reuses_rows(kernel, stride, padding, dtype):
  """64 images: one task per image for up to 16 threads, so every output row but the first
  reads rows transformed for an earlier one (the case above splits images into one-row
  tasks on machines with 4 or more threads)."""
  x = jax.random.normal(jax.random.key(0), (64, 11, 9, 20)).astype(dtype)
  outs = []
  for impl in ("conv", "native"):
    rng = np.random.default_rng(1)
    conv = depthwise.DepthwiseConv(20, kernel, stride, padding=padding, impl=impl, dtype=dtype,
                                init=rng)
    bn, in_bn = _running_batch_norm(20, rng), _running_batch_norm(20, rng)
    outs.append(np.asarray(conv.with_batch_norms(x, before=in_bn, after=bn, activation="swish"),
                           np.float32))
  tolerance = 1e-5 if dtype == jnp.float32 else 5e-2  # bfloat16: a step is 2^-8 relative.
  np.testing.assert_allclose(outs[1], outs[0], rtol=tolerance, atol=tolerance)


SHARDED = r"""
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from efficientnet_jax.models import create_model, depthwise
assert create_model("b0").opts.depthwise == "shifted"  # 'auto' on several CPU devices.
mesh = Mesh(np.asarray(jax.devices()), ("data",))
x = jax.random.normal(jax.random.key(0), (4, 9, 9, 16))
w = jax.random.normal(jax.random.key(1), (3, 3, 1, 16))
loss = lambda impl: lambda w, x: jnp.sum(jnp.sin(depthwise.depthwise_conv(x, w, 2, "same", impl)))
xs = jax.device_put(x, NamedSharding(mesh, P("data")))
ws = jax.device_put(w, NamedSharding(mesh, P()))
got = jax.jit(jax.grad(loss("native"), argnums=(0, 1)))(ws, xs)
want = jax.grad(loss("conv"), argnums=(0, 1))(w, x)
for a, b in zip(got, want):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)
print("ok")
"""


def test_several_cpu_devices_default_to_shifted_and_native_stays_correct_when_sharded():
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
         "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-c", SHARDED], env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
