"""Splitting the samples of a day into n shards that n workers score independently."""

from __future__ import annotations

import numpy as np

from dealrec_tasks.errors import ConfigError


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` (0-based i) -> (i, n); the error names the parameter."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"shard={text!r}: expected i/n, e.g. 0/4") from None
    check_shard((i, n))
    return i, n


def check_shard(shard: tuple[int, int]) -> None:
    i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise ConfigError(f"shard={i}/{n}: need 0 <= i < n")


def shard_rows(n_rows: int, shard: tuple[int, int]) -> np.ndarray:
    """Rows of shard i of n: a contiguous slice; the n shards cover every row exactly once."""
    check_shard(shard)
    i, n = shard
    return np.arange(i * n_rows // n, (i + 1) * n_rows // n)


def shard_name(shard: tuple[int, int]) -> str:
    return f"shard={shard[0]}-of-{shard[1]}"


def check_shard_count(n: int) -> None:
    """A merge's shard count: at least 1 (the number of shards the scoring ran in); the error names it."""
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"shards={n}: must be >= 1 (the number of shards the scoring ran in)")
