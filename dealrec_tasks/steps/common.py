"""What every step returns."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StepResult:
    """URIs written and the counts a person or an orchestrator needs; ``changed`` is False for a no-op."""

    step: str
    uris: dict[str, str]
    counts: dict[str, Any]
    changed: bool = True
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        counts = ", ".join(
            f"{k} {v:,}" if isinstance(v, int) and not isinstance(v, bool) else f"{k} {v}"
            for k, v in self.counts.items()
        )
        state = "" if self.changed else " (unchanged, no-op)"
        main = next(iter(self.uris.values()), "")
        return f"{self.step}: {counts}{state} -> {main}"


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` (0-based i) -> (i, n); the error names the parameter."""
    from dealrec_tasks.errors import ConfigError

    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"shard={text!r}: expected i/n, e.g. 0/4") from None
    if not (n >= 1 and 0 <= i < n):
        raise ConfigError(f"shard={text!r}: need 0 <= i < n")
    return i, n


def shard_rows(n_rows: int, shard: tuple[int, int]) -> slice:
    """Contiguous slice of rows for shard i of n; the n slices cover every row exactly once."""
    i, n = shard
    bounds = [n_rows * k // n for k in range(n + 1)]
    return slice(bounds[i], bounds[i + 1])


def shard_partition(dt: str, shard: tuple[int, int]) -> str:
    """The partition key of one shard's output: ``dt=D/shard=i-of-n``."""
    return f"{dt}/shard={shard[0]}-of-{shard[1]}"


def merge_shards(lake, dataset: str, dt: str, n: int, name: str, out_dataset: str, key: str = "sample_id"):
    """Concatenate the n published shards of ``dataset`` at ``dt`` into ``out_dataset/dt=D/name``.

    Refuses when a shard is missing (names it) or when shards overlap, so a partial merge is never published.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from dealrec_tasks.errors import InputError

    missing = [i for i in range(n) if lake.manifest(dataset, shard_partition(dt, (i, n))) is None]
    if missing:
        raise InputError(f"{lake.partition(dataset, dt)}: shard(s) {missing} of {n} are not published yet")
    parts = [lake.read(dataset, shard_partition(dt, (i, n)), name) for i in range(n)]
    table = pa.concat_tables(parts)
    table = table.take(pc.sort_indices(table, [(key, "ascending")]))
    if len(pc.unique(table.column(key))) != table.num_rows:
        raise InputError(f"{lake.partition(dataset, dt)}: shards overlap (duplicate {key})")
    sources = [lake.partition(dataset, shard_partition(dt, (i, n))) for i in range(n)]
    pub = lake.publish(out_dataset, dt, {name: table}, extra={"source": {"shards": sources}})
    return pub, table
