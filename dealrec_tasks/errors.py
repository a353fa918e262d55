"""User-facing errors: the CLI prints their message and exits non-zero, without a traceback."""


class DealrecError(Exception):
    """Base class; the message must name the file, row or parameter at fault."""

    exit_code = 2


class ConfigError(DealrecError):
    """A parameter is out of range or malformed."""


class InputError(DealrecError):
    """An input file or partition is missing or unreadable."""


class OrderError(DealrecError):
    """A day is processed out of order (would rewrite history that later days depend on)."""


class PartitionNotFound(InputError):
    """A partition has no manifest, so readers must not trust it."""
