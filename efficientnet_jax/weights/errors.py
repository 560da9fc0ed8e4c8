"""The base of every error the weights package raises for a user to act on (the message says how)."""

from efficientnet_jax.errors import UserError


class WeightsError(UserError):
  """A checkpoint or weights spec that cannot be used as given."""
