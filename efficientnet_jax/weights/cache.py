"""The local weight cache: known names -> converted weights, downloaded at most once.

Layout under the cache directory ($EFFICIENTNET_JAX_WEIGHTS, default
~/.cache/efficientnet_jax/weights):
  <name>/params.npz, <name>/metadata.json   converted weights (see ported.py)
  downloads/<file>                           the raw checkpoint as published
Set EFFICIENTNET_JAX_OFFLINE=1 to never touch the network.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import sys
import tempfile
import urllib.request

from efficientnet_jax.weights.converter import convert_checkpoint
from efficientnet_jax.weights.errors import WeightsError
from efficientnet_jax.weights.known import KNOWN_WEIGHTS, KnownWeights, packaged_file
from efficientnet_jax.weights.ported import PortedWeights, is_weights_dir, load_weights, save_weights

CACHE_ENV = "EFFICIENTNET_JAX_WEIGHTS"
OFFLINE_ENV = "EFFICIENTNET_JAX_OFFLINE"
_DOWNLOAD_TIMEOUT_S = 60
# Published file names end in the first hex digits of the file's SHA-256 (torch.hub style).
_HASH_SUFFIX = re.compile(r"-([0-9a-f]{8,64})\.\w+$")


class WeightsUnavailableError(WeightsError, RuntimeError):
  """Known weights are neither cached nor downloadable; the message says what to do."""


def cache_dir() -> str:
  default = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                         "efficientnet_jax", "weights")
  return os.environ.get(CACHE_ENV) or default


def fetch_known(name: str) -> PortedWeights:
  """Converted weights for a known name: from the cache, else downloaded and converted."""
  known = KNOWN_WEIGHTS[name]
  converted = os.path.join(cache_dir(), name)
  if is_weights_dir(converted):
    return load_weights(converted)
  raw = packaged_file(known) if known.pip_package else _download(known)
  weights = convert_checkpoint(raw, arch=known.arch, source=known.source)
  save_weights(weights, converted)
  return weights


def download(url: str, destination: str) -> None:
  """Fetches `url` into `destination` atomically (a partial file never lands there)."""
  print(f"Downloading {url}", file=sys.stderr)
  fd, partial = tempfile.mkstemp(dir=os.path.dirname(destination), suffix=".part")
  try:
    with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
      while chunk := response.read(1 << 20):
        out.write(chunk)
    os.replace(partial, destination)
  finally:
    if os.path.exists(partial):
      os.remove(partial)


def _download(known: KnownWeights) -> str:
  path = os.path.join(cache_dir(), "downloads", known.filename)
  if os.path.isfile(path):
    return path
  if os.environ.get(OFFLINE_ENV, "") not in ("", "0"):
    raise WeightsUnavailableError(_unavailable_message(known, f"{OFFLINE_ENV} is set"))
  os.makedirs(os.path.dirname(path), exist_ok=True)
  try:
    download(known.url, path)
  except OSError as e:
    raise WeightsUnavailableError(_unavailable_message(known, f"download failed: {e}")) from e
  _check_hash(path)
  return path


def _check_hash(path: str) -> None:
  match = _HASH_SUFFIX.search(os.path.basename(path))
  if not match:
    return
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(1 << 20):
      digest.update(chunk)
  if not digest.hexdigest().startswith(match.group(1)):
    os.remove(path)
    raise WeightsUnavailableError(
        f"{path}: SHA-256 {digest.hexdigest()[:12]}… does not match the {match.group(1)} its "
        "name promises; the download was corrupt and has been deleted. Try again.")


def _unavailable_message(known: KnownWeights, reason: str) -> str:
  target = os.path.join(cache_dir(), known.name)
  convert = ("python -m efficientnet_jax.convert " + " ".join(
      shlex.quote(f"--{k}={v}") for k, v in
      (("input", known.filename), ("arch", known.arch), ("source", known.source), ("output", target))))
  return (
      f"Pretrained weights {known.name!r} are not in the weight cache ({cache_dir()}) and cannot "
      f"be downloaded ({reason}).\n"
      f"On a machine with network access, download\n  {known.url}\n"
      f"copy {known.filename} here and convert it into the cache:\n  {convert}\n"
      f"(or place it at {os.path.join(cache_dir(), 'downloads', known.filename)}; it is "
      "converted on first use).")
