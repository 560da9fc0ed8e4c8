"""A free TCP port for a coordinator on this host (launch/local_multiprocess.sh, tests).

`python -m efficientnet_jax.ports` prints one. The port is drawn below the kernel's
ephemeral range: a port found by binding port 0 is an ephemeral one, which any outgoing
connection (the collectives open many) may take in the moment before the coordinator binds it.
"""

from __future__ import annotations

import random
import socket

_RANGE = (20000, 32000)  # Below Linux's default ephemeral range (32768-60999).


def free_port(tries: int = 100) -> int:
  """A port in _RANGE that nothing listens on now."""
  rng = random.SystemRandom()
  for _ in range(tries):
    port = rng.randrange(*_RANGE)
    with socket.socket() as s:
      try:
        s.bind(("127.0.0.1", port))
      except OSError:
        continue
      return port
  raise OSError(f"No free TCP port in {_RANGE} after {tries} tries.")


if __name__ == "__main__":
  print(free_port())
