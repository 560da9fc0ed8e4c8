"""The persistent XLA compilation cache: compile a step once, load it in later runs.

  compile_cache.enable(config.compile_cache)   # before the first compilation
  with compile_cache.reporting("train step"):  # logs the compile time and cache hits
    jax.block_until_ready(step(...))

A resumed or repeated run (training, evaluate, predict, the benchmarks) then loads its
compiled steps from the cache instead of compiling them again (60-140 s with autotuning on
a GPU). The cache is trusted code: keep it in a folder only you can write.
"""

from __future__ import annotations

import collections
import contextlib
import os
import time
from collections.abc import Iterator

from absl import logging

USER = "user"  # $JAX_COMPILATION_CACHE_DIR when set, else the user's cache folder.
ENV = "JAX_COMPILATION_CACHE_DIR"
_REQUESTS = "/jax/compilation_cache/compile_requests_use_cache"
_HITS = "/jax/compilation_cache/cache_hits"
_SAVED = "/jax/compilation_cache/compile_time_saved_sec"


def directory(setting: str) -> str | None:
  """The cache folder `setting` names: USER, a folder, or "" (None: no cache)."""
  if setting == USER:
    if ENV in os.environ:
      return os.environ[ENV] or None
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(cache, "efficientnet_jax", "xla")
  return os.path.expanduser(setting) if setting else None


def _options(setting: str) -> dict[str, bool | str | float | int]:
  """JAX's options for the cache `setting` names: every program cached however fast it
  compiled (CPU steps too)."""
  path = directory(setting)
  if path is None:
    return {"jax_enable_compilation_cache": False}
  return {"jax_enable_compilation_cache": True, "jax_compilation_cache_dir": path,
          "jax_persistent_cache_min_compile_time_secs": 0.0,
          "jax_persistent_cache_min_entry_size_bytes": -1}


def enable(setting: str = USER) -> str | None:
  """Points JAX at the cache folder (or turns the cache off); call before the first
  compilation. Returns the folder."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental.compilation_cache import (  # pylint: disable=g-import-not-at-top
      compilation_cache)

  for name, value in _options(setting).items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()  # Opened at the next compilation, in the folder set now.
  return directory(setting)


def export(setting: str = USER) -> None:
  """enable() for this process and the processes it starts, through their environment;
  call before JAX is imported."""
  for name, value in _options(setting).items():
    os.environ[name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)


@contextlib.contextmanager
def reporting(what: str) -> Iterator[None]:
  """Times the block (the first call of a step, waited for: tracing, compiling or loading,
  one run) and logs one line: compiled in N s, or loaded from the compilation cache in N s
  (every program it needed was a hit), with the compile time that saved."""
  import jax  # pylint: disable=g-import-not-at-top

  counts: collections.Counter[str] = collections.Counter()
  saved = [0.0]

  def listener(event: str, **_) -> None:
    counts[event] += 1

  def duration_listener(event: str, seconds: float, **_) -> None:
    if event == _SAVED:
      saved[0] += seconds

  jax.monitoring.register_event_listener(listener)
  jax.monitoring.register_event_duration_secs_listener(duration_listener)
  start = time.perf_counter()
  try:
    yield
  finally:
    jax.monitoring.unregister_event_listener(listener)
    jax.monitoring.unregister_event_duration_listener(duration_listener)
  seconds = time.perf_counter() - start
  if counts[_HITS] and counts[_HITS] == counts[_REQUESTS]:
    logging.info("%s from the compilation cache in %.1f s (tracing, loading, one run; %.1f s "
                 "of compilation saved)", what, seconds, saved[0])
  else:
    on = jax.config.jax_enable_compilation_cache and jax.config.jax_compilation_cache_dir
    cached = "" if on else " (compilation cache off)"
    logging.info("compiled %s in %.1f s%s", what, seconds, cached)
