"""Reference PyTorch EfficientNets for the weight-port tests, and helpers to compare."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx


def randomize(model: torch.nn.Module, blocks: list[torch.nn.Module], calibration: np.ndarray,
              seed: int = 0) -> torch.nn.Module:
  """Random BatchNorm affines and statistics and an O(1)-logit classifier; eval mode.

  Fresh BatchNorms (mean 0, var 1, identity affine) would hide a swapped mean/var or
  scale/bias. Each BatchNorm's statistics are those of its input on the calibration
  batch (eval mode, network order), perturbed at random so that a port normalizing with
  batch statistics would fail; activations stay near unit scale, so the logits depend
  on the input. Each block's last BatchNorm gets a small scale, as in trained networks:
  a random deep BN network is otherwise chaotic (rounding noise grows ~1000x).
  """
  g = torch.Generator().manual_seed(seed)

  def calibrate(bn: torch.nn.BatchNorm2d, inputs: tuple[torch.Tensor]) -> None:
    x = inputs[0].transpose(0, 1).flatten(1)
    n = bn.num_features
    bn.running_var.copy_(x.var(1) * (torch.rand(n, generator=g) * 0.4 + 0.8))
    bn.running_mean.copy_(x.mean(1) + torch.randn(n, generator=g) * 0.1 * x.std(1))

  bns = _batchnorms(model)
  block_outputs = {id(_batchnorms(b)[-1]) for b in blocks}
  model.eval()
  with torch.no_grad():
    for bn in bns:
      scale = 0.2 if id(bn) in block_outputs else 1.0
      bn.weight.copy_((torch.rand(bn.num_features, generator=g) * 0.5 + 0.75) * scale)
      bn.bias.copy_(torch.randn(bn.num_features, generator=g) * 0.1)
    hooks = [bn.register_forward_pre_hook(calibrate) for bn in bns]
    model(torch.from_numpy(calibration))
    for hook in hooks:
      hook.remove()
    fc = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    fc.weight.copy_(torch.randn(fc.weight.shape, generator=g) * 0.5 / fc.in_features ** 0.5)
    fc.bias.copy_(torch.randn(fc.bias.shape, generator=g) * 0.1)
  return model


def randomized_geffnet(name: str, calibration: np.ndarray, **kwargs: Any) -> torch.nn.Module:
  """geffnet's `name` (timm's modules and key names), seeded and randomized as above."""
  import geffnet

  torch.manual_seed(0)
  model = geffnet.create_model(name, **kwargs)
  return randomize(model, [b for stage in model.blocks for b in stage], calibration)


def _batchnorms(module: torch.nn.Module) -> list[torch.nn.BatchNorm2d]:
  return [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]


# Parity: max |our logit - the reference's| <= LOGIT_TOLERANCE x max(1, max |logit|). Both are
# float32 approximations of the float64 logits; on a randomized B2 at 64 px their rounding
# differences reached 8e-5 to 1.1e-4 (logits up to 5.8), depending only on the order of the
# sums (which depthwise implementation, which CPU): an absolute 1e-4 was within that noise.
LOGIT_TOLERANCE = 1e-4
# And against the float64 truth ours may be at most this many times as far as the
# reference's own float32 logits are (a porting error is orders of magnitude larger).
FLOAT64_FACTOR = 3.0


def assert_logit_parity(actual: np.ndarray, expected: np.ndarray,
                        truth: np.ndarray | None = None) -> None:
  """Our float32 logits `actual` vs the reference's float32 `expected` (and float64 `truth`)."""
  assert expected.std(axis=0).mean() > 0.1, "logits must depend on the input to compare anything"
  scale = max(1.0, float(np.abs(expected).max()))
  assert np.abs(actual - expected).max() <= LOGIT_TOLERANCE * scale, (
      f"max |delta| {np.abs(actual - expected).max():.3g} > {LOGIT_TOLERANCE} x {scale:.3g}")
  if truth is not None:
    assert np.abs(actual - truth).max() <= FLOAT64_FACTOR * np.abs(expected - truth).max()


def state_dict_numpy(model: torch.nn.Module) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def random_images(n: int, size: int, seed: int = 0) -> np.ndarray:
  """A normalized-looking NCHW float32 batch."""
  return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


def torch_logits(model: torch.nn.Module, nchw: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(torch.from_numpy(nchw)).numpy()


def float64_logits(model: torch.nn.Module, nchw: np.ndarray) -> np.ndarray:
  """The reference's logits in float64: the truth both float32 versions approximate."""
  with torch.no_grad():
    logits = model.double()(torch.from_numpy(nchw).double()).numpy()
  model.float()
  return logits


_forward = nnx.jit(lambda model, x: model(x))


def jax_logits(model: nnx.Module, nchw: np.ndarray) -> np.ndarray:
  """Our model's eval logits for the same batch (NCHW -> NHWC)."""
  model.eval()
  return np.asarray(_forward(model, jnp.asarray(nchw.transpose(0, 2, 3, 1))))
