"""The errors a user acts on. Each message names the file, field or flag and says what to do;
command-line tools print them as `Error: <message>` without a traceback (cli.py)."""


class UserError(Exception):
  """Base of every error caused by the user's input (config, flags, files), not by a bug."""


class ConfigError(UserError, ValueError):
  """A config field or command-line flag has a value that cannot work."""


class NotFoundError(UserError, FileNotFoundError):
  """A file or folder the user named does not exist or holds nothing usable."""
