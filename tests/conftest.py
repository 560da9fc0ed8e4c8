"""Session setup shared by all tests.

A persistent XLA compilation cache (also inherited by the subprocesses some tests start),
so a step that several tests or processes build with the same shapes compiles once.
Set before JAX is imported by any test module.
"""

import os
import tempfile

import pytest

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "efficientnet_jax_test_xla_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
  """The demo's synthetic copy, generated (and prepared) once for this module."""
  root = str(tmp_path_factory.mktemp("demo_data"))
  os.environ["EFFICIENTNET_JAX_DEMO_DATA"] = root
  yield root
  del os.environ["EFFICIENTNET_JAX_DEMO_DATA"]


def pytest_collection_modifyitems(items):
  """Slow modules first (stable otherwise): under pytest-xdist the long runs then start at
  once on both workers and the short tests fill in around them, instead of one worker
  finishing a long module alone at the end."""
  items.sort(key=lambda item: item.get_closest_marker("slow") is None)
