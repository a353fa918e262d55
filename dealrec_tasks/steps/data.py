"""Data steps: import, log producers (replay, synthetic), daily ingest, samples."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from dealrec_tasks.config import (
    ImportConfig,
    IngestConfig,
    ReplayConfig,
    SamplesConfig,
    SyntheticConfig,
    parse_dt,
)
from dealrec_tasks.data import dealrec_format
from dealrec_tasks.data import ingest as ingest_mod
from dealrec_tasks.data import replay as replay_mod
from dealrec_tasks.data import samples as samples_mod
from dealrec_tasks.data import synthetic as synthetic_mod
from dealrec_tasks.data.arrow import list_lengths
from dealrec_tasks.data.schema import (
    DATASETS,
    INTERACTIONS,
    ITEMS,
    REJECTS,
    SAMPLES,
    SEQUENCES,
    SPLIT_SEQUENCES_SCHEMA,
    VOCAB,
)
from dealrec_tasks.errors import OrderError
from dealrec_tasks.progress import progress
from dealrec_tasks.steps.common import StepResult
from dealrec_tasks.storage import Lake, join_uri, sha256


def _dataset_name(name: str) -> str:
    return f"{DATASETS}/{name}"


# ---------------------------------------------------------------------------------------------------------
# Import and log producers
# ---------------------------------------------------------------------------------------------------------
def import_dealrec(source_dir: str, lake: Lake, cfg: ImportConfig) -> StepResult:
    """The paper's release -> ``datasets/<name>/`` (catalogue, vocab, split sequences) and the lake catalogue."""
    tables = dealrec_format.read_release(source_dir)
    seqs = tables["sequences"]
    counts = {
        "users": seqs.num_rows,
        "items": tables["items"].num_rows,
        "test_users": int(sum(1 for t in seqs.column("test").to_pylist() if t)),
        "valid_users": int(sum(1 for t in seqs.column("valid").to_pylist() if t)),
        "interactions": int(sum(len(x) for k in ("train", "valid", "test") for x in seqs.column(k).to_pylist())),
    }
    src = {"source_dir": str(source_dir)}
    pub = lake.publish(
        _dataset_name(cfg.dataset), None, tables, config=cfg.to_dict(), extra={"counts": counts, "source": src}
    )
    cat = lake.publish(ITEMS, None, {"items.parquet": tables["items"]}, extra={"source": src})
    return StepResult("import-dealrec", {"dataset": pub.uri, "items": cat.uri}, counts, pub.changed or cat.changed)


def _publish_logs(
    lake: Lake, days: dict[str, pa.Table], config: dict, extra: dict, extra_files: dict[str, bytes] | None = None
) -> tuple[list[str], bool]:
    uris, changed = [], False
    for dt, table in progress(days.items(), desc="writing daily logs", unit="day", total=len(days)):
        blob = (extra_files or {}).get(dt)
        pub = lake.publish(
            INTERACTIONS,
            dt,
            {"part-0.parquet": table},
            config=config,
            extra=extra,
            blobs={"part-1-bad-rows.jsonl": blob} if blob else None,
        )
        uris.append(pub.uri)
        changed |= pub.changed
    return uris, changed


def replay(lake: Lake, cfg: ReplayConfig) -> StepResult:
    """Cut an imported dataset into ``cfg.days`` daily log partitions (a replay, not real time)."""
    name = _dataset_name(cfg.dataset)
    lake.require_manifest(name)
    days = replay_mod.replay_days(
        lake.read(name, None, "sequences"), lake.read(name, None, "item_vocab"), cfg.days, cfg.start, cfg.seed
    )
    extra = {"replay": True, "note": replay_mod.REPLAY_NOTE, "source": {"dataset": lake.partition(name)}}
    uris, changed = _publish_logs(lake, days, cfg.to_dict(), extra)
    counts = {
        "days": len(days),
        "interactions": sum(t.num_rows for t in days.values()),
        "first_dt": min(days),
        "last_dt": max(days),
    }
    return StepResult("replay", {"interactions": lake.uri(INTERACTIONS)}, counts, changed, [replay_mod.REPLAY_NOTE])


def synthetic(lake: Lake, cfg: SyntheticConfig) -> StepResult:
    """Synthetic catalogue + daily logs (for the demo and for tests without the real data)."""
    items, days, bad = synthetic_mod.generate(cfg)
    cat = lake.publish(ITEMS, None, {"items.parquet": items}, config=cfg.to_dict())
    uris, changed = _publish_logs(lake, days, cfg.to_dict(), {"synthetic": True}, bad)
    counts = {
        "days": len(days),
        "interactions": sum(t.num_rows for t in days.values()),
        "items": items.num_rows,
        "first_dt": min(days),
        "last_dt": max(days),
    }
    return StepResult(
        "synthetic", {"interactions": lake.uri(INTERACTIONS), "items": cat.uri}, counts, changed or cat.changed
    )


# ---------------------------------------------------------------------------------------------------------
# Ingest
# ---------------------------------------------------------------------------------------------------------
def log_days(lake: Lake) -> list[str]:
    """Days that have a raw log folder (producers need not write manifests)."""
    return sorted(n[3:] for n in lake.storage.list_dir(lake.uri(INTERACTIONS)) if n.startswith("dt="))


def _log_files(lake: Lake, dt: str) -> dict[str, bytes]:
    folder = lake.partition(INTERACTIONS, dt)
    names = [n for n in lake.storage.list_dir(folder) if ingest_mod.is_log_file(n)]
    return {n: lake.storage.read_bytes(join_uri(folder, n)) for n in names}


def ingest(lake: Lake, dt: str, cfg: IngestConfig) -> StepResult:
    """Validate day ``dt``'s logs, quarantine bad rows, extend the vocab and the cumulative sequences.

    Days go in order: a day before an already ingested one is refused, as is skipping a day that has logs.
    Re-ingesting a day with unchanged logs is a no-op.
    """
    parse_dt(dt)
    files = _log_files(lake, dt)
    fingerprint = {name: sha256(data) for name, data in files.items()}
    done = lake.partitions(SEQUENCES)
    later = [d for d in done if d > dt]
    if dt in done:
        manifest = lake.require_manifest(SEQUENCES, dt)
        if manifest.get("source", {}).get("files") == fingerprint and manifest.get("config") == cfg.to_dict():
            return StepResult("ingest", _ingest_uris(lake, dt), manifest.get("counts", {}), changed=False)
        if later:
            raise OrderError(
                f"dt={dt}: its logs or config changed since it was ingested, but later days {later[:3]} were built "
                f"on it; re-ingest from {dt} onward after removing {lake.uri(SEQUENCES)}/dt>{dt}"
            )
    elif later:
        raise OrderError(f"dt={dt}: days must be ingested in order, and {later[-1]} is already ingested")
    previous = max((d for d in done if d < dt), default=None)
    skipped = [d for d in log_days(lake) if (previous is None or d > previous) and d < dt]
    if skipped:
        raise OrderError(f"dt={dt}: day {skipped[0]} has logs that were not ingested yet; ingest it first")

    parsed = [ingest_mod.parse_log_file(name, data, cfg.allow_extra_columns) for name, data in files.items()]
    day = ingest_mod.validate_day(parsed, dt)
    if previous is not None:
        prev_seq = lake.read(SEQUENCES, previous, "sequences.parquet")
        users = lake.read(VOCAB, previous, "users.parquet")
        items = lake.read(VOCAB, previous, "items.parquet")
    else:
        prev_seq, users, items = None, ingest_mod.empty_vocab("user_idx"), ingest_mod.empty_vocab("item_idx")
    users, new_users = ingest_mod.extend_vocab(users, day.clean["user_id"], "user_id", "user_idx")
    items, new_items = ingest_mod.extend_vocab(items, day.clean["item_id"], "item_id", "item_idx")
    sequences = ingest_mod.append_to_sequences(
        prev_seq,
        users,
        ingest_mod.lookup(users, day.clean["user_id"], "user_id", "user_idx"),
        ingest_mod.lookup(items, day.clean["item_id"], "item_id", "item_idx"),
        day.clean["ts"].dt.as_unit("us").astype("int64").to_numpy(),
    )
    read = len(day.clean) + day.rejects.num_rows
    counts = {
        "files": len(files),
        "rows_read": read,
        "accepted": len(day.clean),
        "rejected": day.rejects.num_rows,
        **{f"rejected_{k}": v for k, v in day.reject_counts().items() if v},
        "users": users.num_rows,
        "new_users": new_users,
        "items": items.num_rows,
        "new_items": new_items,
        "interactions_total": int(sum(list_lengths(sequences.column("items")))),
    }
    notes = []
    if not files:
        notes.append(f"dt={dt}: no log files in {lake.partition(INTERACTIONS, dt)} (an empty day)")
    if day.rejects.num_rows:
        notes.append(f"dt={dt}: {day.rejects.num_rows:,} row(s) quarantined to {lake.partition(REJECTS, dt)}")
    config = cfg.to_dict()
    extra = {"counts": counts, "source": {"files": fingerprint, "previous_dt": previous}}
    # Unreadable files are kept whole, so nothing is lost even when no row could be parsed.
    blobs = {f"files/{n}": files[n] for n in day.unreadable_files}
    pubs = [
        lake.publish(REJECTS, dt, {"rejects.parquet": day.rejects}, config=config, extra=extra, blobs=blobs),
        lake.publish(VOCAB, dt, {"users.parquet": users, "items.parquet": items}, config=config, extra=extra),
        # Last: a sequences manifest is what marks the day as ingested.
        lake.publish(SEQUENCES, dt, {"sequences.parquet": sequences}, config=config, extra=extra),
    ]
    return StepResult("ingest", _ingest_uris(lake, dt), counts, any(p.changed for p in pubs), notes)


def _ingest_uris(lake: Lake, dt: str) -> dict[str, str]:
    return {k: lake.partition(k, dt) for k in (SEQUENCES, VOCAB, REJECTS)}


def pending_days(lake: Lake) -> list[str]:
    """Log days after the last ingested one, in order."""
    last = max(lake.partitions(SEQUENCES), default="")
    return [d for d in log_days(lake) if d > last]


# ---------------------------------------------------------------------------------------------------------
# Samples
# ---------------------------------------------------------------------------------------------------------
def samples(lake: Lake, dt: str, cfg: SamplesConfig) -> StepResult:
    """Samples at ``dt`` from the cumulative sequences, split by day windows (see ``SamplesConfig``)."""
    parse_dt(dt)
    seqs = lake.read(SEQUENCES, dt, "sequences.parquet")
    split = samples_mod.time_split(seqs, dt, cfg.valid_days, cfg.test_days)
    return _publish_samples(lake, SAMPLES, dt, split, cfg, {"sequences": lake.partition(SEQUENCES, dt)})


def samples_from_dataset(lake: Lake, dataset: str, cfg: SamplesConfig) -> StepResult:
    """Samples of an imported dataset with its own (the paper's) split: ``datasets/<name>/samples/``."""
    name = _dataset_name(dataset)
    split = lake.read(name, None, "sequences").cast(SPLIT_SEQUENCES_SCHEMA)
    return _publish_samples(lake, f"{name}/{SAMPLES}", None, split, cfg, {"dataset": lake.partition(name)})


def _publish_samples(
    lake: Lake, dataset: str, dt: str | None, split: pa.Table, cfg: SamplesConfig, source: dict
) -> StepResult:
    table = samples_mod.build_samples(split, cfg.max_len)
    counts = samples_mod.split_counts(table)
    lengths = np.asarray(
        [
            len(h)
            for h, s in zip(table.column("history").to_pylist(), table.column("split").to_pylist())
            if s == samples_mod.TRAIN
        ]
    )
    counts["empty_history_train"] = int((lengths == 0).sum()) if len(lengths) else 0
    pub = lake.publish(
        dataset, dt, {"samples.parquet": table}, config=cfg.to_dict(), extra={"counts": counts, "source": source}
    )
    return StepResult("samples", {"samples": pub.uri}, counts, pub.changed)
