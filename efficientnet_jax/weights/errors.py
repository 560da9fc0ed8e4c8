"""The base of every error this package raises for a user to act on (the message says how)."""


class WeightsError(Exception):
  """A checkpoint or weights spec that cannot be used as given."""
