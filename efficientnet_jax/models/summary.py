"""Prints every architecture's resolution, parameter counts and forward FLOPs.

  python -m efficientnet_jax.models.summary [--archs=b0,b4]

FLOPs are XLA's cost analysis of the compiled eval-mode forward pass for one image at
the architecture's resolution (a multiply-add counts as 2 FLOPs; papers quote multiply-adds).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from absl import app, flags
from flax import nnx

from efficientnet_jax.models import ARCHS, create_model

_ARCHS = flags.DEFINE_list("archs", list(ARCHS), "Architectures to summarise.")


@dataclasses.dataclass(frozen=True)
class Summary:
  arch: str
  resolution: int
  params_1000: int
  params_196: int
  flops: float


def count_params(model: nnx.Module) -> int:
  """Trainable parameters (BatchNorm running statistics excluded)."""
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def forward_flops(model: nnx.Module, resolution: int) -> float:
  """FLOPs of one eval-mode forward pass on a single image, from XLA's cost analysis."""
  model.eval()
  graphdef, state = nnx.split(model)
  image = jax.ShapeDtypeStruct((1, resolution, resolution, model.in_channels), jnp.float32)
  compiled = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)).lower(state, image).compile()
  analysis = compiled.cost_analysis()
  if isinstance(analysis, list):  # Older jax returned one dict per device.
    analysis = analysis[0]
  return float(analysis["flops"])


def summarize(arch: str) -> Summary:
  resolution = ARCHS[arch].resolution
  # The grouped XLA convolution is counted exactly; the shifted form's FLOPs are the same.
  model = create_model(arch, num_classes=1000, depthwise="conv")
  return Summary(
      arch=arch,
      resolution=resolution,
      params_1000=count_params(model),
      params_196=count_params(create_model(arch, num_classes=196, depthwise="conv")),
      flops=forward_flops(model, resolution),
  )


def format_table(rows: Sequence[Summary]) -> str:
  header = f"{'arch':<8}{'res':>5}{'params (1000)':>15}{'params (196)':>14}{'GFLOPs':>9}{'GMACs':>8}"
  lines = [header, "-" * len(header)]
  for r in rows:
    lines.append(f"{r.arch:<8}{r.resolution:>5}{r.params_1000:>15,}{r.params_196:>14,}"
                 f"{r.flops / 1e9:>9.2f}{r.flops / 2e9:>8.2f}")
  return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
  del argv
  unknown = [a for a in _ARCHS.value if a not in ARCHS]
  if unknown:
    raise app.UsageError(f"--archs: unknown {unknown}; choose from {', '.join(ARCHS)}.")
  print(format_table([summarize(arch) for arch in _ARCHS.value]))


if __name__ == "__main__":
  app.run(main)
