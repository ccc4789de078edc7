"""ConfigError: a user mistake in the config or command line, printed without a traceback."""


class ConfigError(ValueError):
    """A bad config file, key, value or combination; the message names the key and what is allowed."""
