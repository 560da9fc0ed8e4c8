"""Compile the C++ kernels once per machine and register them with XLA:CPU.

The shared library is cached under $EFFICIENTNET_JAX_NATIVE_CACHE (default
~/.cache/efficientnet_jax/native), named by a hash of the source, the compiler and its flags,
jaxlib's version and the CPU (the build uses -march=native), so an edit, an upgrade or a
different machine sharing the home directory builds its own copy. Building takes a few
seconds; concurrent processes may both build, and each installs its result atomically.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jaxlib

SOURCE = Path(__file__).with_name("depthwise.cc")
CACHE_ENV = "EFFICIENTNET_JAX_NATIVE_CACHE"
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC")
TARGETS = {"efficientnet_jax_depthwise_forward": "EjxDepthwiseForward",
           "efficientnet_jax_depthwise_backward": "EjxDepthwiseBackward"}


class NativeBuildError(RuntimeError):
  """The native kernels could not be compiled or loaded."""


def _cache_dir() -> Path:
  """$EFFICIENTNET_JAX_NATIVE_CACHE, else ~/.cache/..., else (read-only home) the temp dir."""
  if os.environ.get(CACHE_ENV):
    return Path(os.environ[CACHE_ENV])
  for base in (Path.home() / ".cache", Path(tempfile.gettempdir()) / f"cache-{os.getuid()}"):
    path = base / "efficientnet_jax" / "native"
    try:
      path.mkdir(parents=True, exist_ok=True)
    except OSError:
      continue
    if os.access(path, os.W_OK):
      return path
  raise NativeBuildError(f"No writable cache directory for the native kernels; set ${CACHE_ENV}.")


def _cpu_signature() -> str:
  """What -march=native depends on: the CPU model and its feature flags."""
  try:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
  except OSError:
    return platform.machine() + platform.processor()
  keep = [line for line in lines if line.split(":")[0].strip() in ("model name", "flags", "Features")]
  return platform.machine() + "\n".join(sorted(set(keep)))


def _compiler() -> str:
  name = os.environ.get("CXX", "g++")
  path = shutil.which(name)
  if path is None:
    raise NativeBuildError(
        f"No C++ compiler {name!r} on PATH to build {SOURCE.name}. Install one (Debian/Ubuntu: "
        f"`apt install g++`), point $CXX at one, or set model.depthwise='shifted'.")
  return path


def library_path() -> Path:
  """The cached shared library, compiled first if this machine has no current copy."""
  compiler = _compiler()
  version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
  key = hashlib.sha256("\0".join(
      [SOURCE.read_text(), compiler, version, " ".join(FLAGS), jaxlib.__version__,
       _cpu_signature()]).encode()).hexdigest()[:16]
  target = _cache_dir() / f"depthwise-{key}.so"
  if target.exists():
    return target
  target.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=target.stem, suffix=".so.tmp", dir=target.parent)
  os.close(fd)
  cmd = [compiler, *FLAGS, "-I", jax.ffi.include_dir(), str(SOURCE), "-o", tmp]
  result = subprocess.run(cmd, capture_output=True, text=True)
  if result.returncode != 0:
    os.unlink(tmp)
    raise NativeBuildError(
        f"Building {SOURCE} failed ({' '.join(cmd)}):\n{result.stderr[-2000:]}\n"
        f"Set model.depthwise='shifted' to train without the native kernel.")
  os.replace(tmp, target)
  return target


@functools.cache
def load() -> ctypes.CDLL:
  """Builds (if needed) and loads the library, and registers its FFI targets for XLA:CPU."""
  lib = ctypes.cdll.LoadLibrary(str(library_path()))
  for target, symbol in TARGETS.items():
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
  return lib


@functools.cache
def unavailable_reason() -> str | None:
  """None when the native kernels are loaded; otherwise why they cannot be."""
  try:
    load()
  except (NativeBuildError, OSError) as e:
    return str(e)
  return None
