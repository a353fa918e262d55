"""What every step returns."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa


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


def merge_shards(
    lake,
    parts: list[str],
    name: str,
    out_dataset: str,
    out_dt: str | None,
    extra: dict | Callable[[dict], dict] | None = None,
    key: str = "sample_id",
    finish: Callable[[pa.Table], pa.Table] | None = None,
):
    """Concatenate the published shard partitions ``parts`` (each holding ``name``) into one partition; returns the
    publish outcome, the merged table and shard 0's manifest.

    ``extra``: manifest fields of the merge, or a function of shard 0's manifest giving them. ``finish`` (table ->
    table), if given, runs on the checked concatenation before it is published: for what needs every row at once
    (the influence ensemble's normalisation).

    Refuses, naming the problem, when a shard is missing, when shards were made with different configs or inputs,
    or when they do not hold exactly the ``counts.train_samples`` distinct ``key`` values their manifests announce:
    a partial or mixed merge is never published.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from dealrec_tasks.errors import InputError

    manifests = [lake.manifest(p) for p in parts]
    missing = [i for i, m in enumerate(manifests) if m is None]
    if missing:
        raise InputError(f"{lake.partition(parts[0])}: shard(s) {missing} of {len(parts)} are not published yet")
    first = manifests[0]
    if any((m["config"], m.get("inputs")) != (first["config"], first.get("inputs")) for m in manifests):
        raise InputError(f"{lake.partition(parts[0])}: shards were made with different configs, inputs or models")
    expected_rows = first.get("counts", {}).get("train_samples")
    table = pa.concat_tables([lake.read(p, None, name) for p in parts])
    table = table.take(pc.sort_indices(table, [(key, "ascending")]))
    distinct = len(pc.unique(table.column(key)))
    if distinct != table.num_rows or table.num_rows != expected_rows:
        raise InputError(
            f"{lake.partition(parts[0])}: shards hold {table.num_rows} rows ({distinct} distinct), "
            f"expected {expected_rows} distinct samples"
        )
    if finish is not None:
        table = finish(table)
    sources = [lake.partition(p) for p in parts]
    pub = lake.publish(
        out_dataset,
        out_dt,
        {name: table},
        config=first["config"],
        inputs=first.get("inputs"),
        extra={"source": {"shards": sources}, "counts": {"samples": table.num_rows}}
        | ((extra(first) if callable(extra) else extra) or {}),
    )
    return pub, table, first
