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


class DegenerateError(ConfigError):
    """A step computed numbers that would mislead every step after it: non-finite weights, scores or metrics,
    scores that are all equal, or a day with no rows. Nothing is published. A ``ConfigError`` because it is
    deterministic (a retry computes the same) and nearly always a parameter's doing: a learning rate that diverges,
    a damping or alpha that zeroes the scores, a window that leaves no rows; the message names the value."""
