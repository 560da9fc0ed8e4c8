"""Default configuration: every field with its default (documented in efficientnet_jax/config.py).

  python -m efficientnet_jax.main --config=configs/default.py --workdir=runs/x \
      --config.model.arch=b0 --config.optim.lr=1e-3
"""

from efficientnet_jax.config import get_config

__all__ = ["get_config"]
