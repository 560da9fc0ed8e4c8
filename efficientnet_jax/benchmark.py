"""Benchmarks: `python -m efficientnet_jax.benchmark <name> [flags]`.

Each module in efficientnet_jax/benchmarks/ with a `main(argv)` is a subcommand named after
the module (e.g. `input`: decode + augmentation throughput); `--help` after the name lists
its flags.
"""

import importlib
import pkgutil
import sys

from efficientnet_jax import benchmarks, hugepages


def subcommands() -> list[str]:
  """Names of the available benchmarks."""
  return sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__)
                if not m.name.startswith("_"))


def main(argv: list[str]) -> None:
  names = subcommands()
  if len(argv) < 2 or argv[1] not in names:
    sys.exit(f"usage: python -m efficientnet_jax.benchmark {{{','.join(names)}}} [flags]")
  from efficientnet_jax import compile_cache  # pylint: disable=g-import-not-at-top

  compile_cache.export()  # Before JAX is imported; the processes a benchmark starts too.
  importlib.import_module(f"efficientnet_jax.benchmarks.{argv[1]}").main(argv[2:])


if __name__ == "__main__":
  hugepages.reexec_with_huge_pages()  # Inherited by the benchmark's worker processes.
  main(sys.argv)
