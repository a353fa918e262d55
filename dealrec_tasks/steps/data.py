"""Data steps: import, log producers (replay, synthetic), daily ingest, samples."""

from __future__ import annotations

import os
import re
import tempfile

import numpy as np
import pyarrow as pa

from dealrec_tasks.catalogue import (
    INTERACTIONS,
    ITEMS,
    REJECTS,
    SAMPLES,
    SEQUENCES,
    SEQUENCES_SNAPSHOT,
    VOCAB,
    imported,
)
from dealrec_tasks.config import (
    CompactConfig,
    Day,
    ImportConfig,
    IngestConfig,
    ReplayConfig,
    SamplesConfig,
    SyntheticConfig,
    check_not_future,
    parse_dt,
)
from dealrec_tasks.data import dealrec_format, sequence_log
from dealrec_tasks.data import ingest as ingest_mod
from dealrec_tasks.data import replay as replay_mod
from dealrec_tasks.data import samples as samples_mod
from dealrec_tasks.data import synthetic as synthetic_mod
from dealrec_tasks.data.arrow import list_lengths
from dealrec_tasks.data.schema import SPLIT_SEQUENCES_SCHEMA, USER_VOCAB_SCHEMA
from dealrec_tasks.errors import ConfigError, DegenerateError, InputError, OrderError
from dealrec_tasks.progress import progress, progress_bar
from dealrec_tasks.steps import readers
from dealrec_tasks.steps.common import StepResult
from dealrec_tasks.steps.readers import read_sequences, read_user_vocab
from dealrec_tasks.storage import (
    MANIFEST,
    DigestReader,
    Lake,
    SourceFile,
    join_uri,
    parquet_bytes,
    parquet_file,
    sha256,
    shown_name,
)


# ---------------------------------------------------------------------------------------------------------
# Import and log producers
# ---------------------------------------------------------------------------------------------------------
def import_dealrec(source_dir: str, lake: Lake, cfg: ImportConfig) -> StepResult:
    """The paper's release -> ``datasets/<name>/`` (catalogue, vocab, split sequences, domain), named by
    ``cfg.dataset`` or the folder. Another dataset of that name is never replaced silently (``cfg.force``); the
    lake's daily catalogue ``items/`` is set only when it is empty or holds this catalogue (``replay`` sets it)."""
    from pathlib import Path

    from dealrec_tasks.llm.prompts import GENERIC_DOMAIN, check_domain

    folder = Path(source_dir).expanduser().resolve()
    name = cfg.dataset or re.sub(r"[^a-z0-9_\-]+", "-", folder.name.lower()).strip("-_")[:64]
    if not name:
        raise ConfigError(f"{folder}: cannot name a dataset after this folder; pass --dataset NAME")
    domain = check_domain(cfg.domain or ("games" if name == "games" else GENERIC_DOMAIN))
    tables = dealrec_format.read_release(folder)
    seqs = tables["sequences"]
    counts = {
        "users": seqs.num_rows,
        "items": tables["items"].num_rows,
        "test_users": int(sum(1 for t in seqs.column("test").to_pylist() if t)),
        "valid_users": int(sum(1 for t in seqs.column("valid").to_pylist() if t)),
        "interactions": int(sum(len(x) for k in ("train", "valid", "test") for x in seqs.column(k).to_pylist())),
    }
    src = {"source_dir": str(folder)}
    config = {"dataset": name, "domain": domain}
    old = lake.manifest(imported(name))
    new_files = {k: sha256(parquet_bytes(t)) for k, t in tables.items()}
    if old is not None and not cfg.force and {k: e["sha256"] for k, e in old["files"].items()} != new_files:
        raise ConfigError(
            f"{lake.partition(imported(name))}: dataset {name!r} exists and holds other data (from "
            f"{old.get('source', {}).get('source_dir')}); pass --dataset ANOTHER_NAME, or --force to replace it"
        )
    pub = lake.publish(
        imported(name), None, tables, config=config, extra={"counts": counts, "source": src, "domain": domain}
    )
    notes, uris = [], {"dataset": pub.uri}
    catalogue = lake.manifest(ITEMS)
    if catalogue is None or catalogue["files"].get("items.parquet", {}).get("sha256") == new_files["items"]:
        cat = lake.publish(ITEMS, None, {"items.parquet": tables["items"]}, extra={"source": src, "domain": domain})
        uris["items"] = cat.uri
    else:
        notes.append(
            f"import-dealrec: the lake's daily catalogue {lake.partition(ITEMS)} holds another catalogue and is kept; "
            f"`dealrec replay --dataset {name}` makes this one the daily lake's"
        )
    return StepResult("import-dealrec", uris, counts | {"dataset": name, "domain": domain}, pub.changed, notes)


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
    """Cut an imported dataset into ``cfg.days`` daily log partitions (a replay, not real time), with its catalogue
    as the daily lake's ``items/``.

    Logs of days already ingested are never rewritten silently: the replay is refused, naming them, unless
    ``cfg.force``, which rewrites them and withdraws the ingested partitions from the first rewritten day on (the
    next ``ingest --all`` ingests those days again, in order).
    """
    name = imported(cfg.dataset)
    dataset = lake.require_manifest(name)
    days = replay_mod.replay_days(
        lake.read(name, None, "sequences"), lake.read(name, None, "item_vocab"), cfg.days, cfg.start, cfg.seed
    )
    ingested = set(lake.partitions(SEQUENCES))
    rewritten = sorted(
        d for d, table in days.items() if d in ingested and _log_files_sha(lake, d) != {sha256(parquet_bytes(table))}
    )
    items = lake.read(name, None, "items") if "items" in dataset["files"] else None  # (a hand-made one may lack it)
    catalogue = lake.manifest(ITEMS)
    other_catalogue = (
        items is not None
        and catalogue is not None
        and catalogue["files"]["items.parquet"]["sha256"] != sha256(parquet_bytes(items))
    )
    if (rewritten or (other_catalogue and ingested)) and not cfg.force:
        what = f"rewrite the logs of ingested days {rewritten[:3]}{'...' if len(rewritten) > 3 else ''}"
        if not rewritten:
            what = f"replace the catalogue {lake.partition(ITEMS)} that ingested days were built with"
        raise OrderError(
            f"replay --dataset {cfg.dataset} would {what}; pass --force to do it (the ingested partitions from the "
            "first rewritten day on are then withdrawn, and `ingest --all` ingests them again)"
        )
    notes = [replay_mod.REPLAY_NOTE]
    if rewritten:
        for d in sorted(ingested):
            if d >= rewritten[0]:
                lake.withdraw(SEQUENCES, d)
        notes.append(f"replay --force: rewrote ingested days {rewritten[0]}..{rewritten[-1]}; withdrew them from "
                     f"{rewritten[0]} on: run `dealrec ingest --all`")  # fmt: skip
    uris_out = {"interactions": lake.uri(INTERACTIONS)}
    cat_changed = False
    if items is not None:
        extra = {"source": {"dataset": lake.partition(name)}, "domain": dataset.get("domain")}
        cat = lake.publish(ITEMS, None, {"items.parquet": items}, extra=extra)
        uris_out["items"], cat_changed = cat.uri, cat.changed
    extra = {"replay": True, "note": replay_mod.REPLAY_NOTE, "source": {"dataset": lake.partition(name)}}
    uris, changed = _publish_logs(lake, days, cfg.to_dict() | {"force": False}, extra)
    counts = {
        "days": len(days),
        "interactions": sum(t.num_rows for t in days.values()),
        "first_dt": min(days),
        "last_dt": max(days),
    }
    return StepResult("replay", uris_out, counts, changed or cat_changed, notes)


def _log_files_sha(lake: Lake, dt: str) -> set[str]:
    """Checksums of the Parquet log files a day's published log partition lists (empty when unpublished)."""
    manifest = lake.manifest(INTERACTIONS, dt)
    return {e["sha256"] for n, e in (manifest or {}).get("files", {}).items() if n.endswith(".parquet")}


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
VOCAB_RECORD = "vocab_sha256"  # sequences manifest key: checksums of the vocab files they were built with
NOT_READ = {"symlink": "a symlink, not followed", "directory": "a directory", "other": "not a regular file"}
#: Datasets ingest reads or writes by day besides the logs: a stray ``dt=...`` folder in them is named in its notes.
DAY_DATASETS = (SEQUENCES, VOCAB, REJECTS, SAMPLES)
#: How to ingest a day after tomorrow on purpose (see ``config.check_not_future``).
ALLOW_FUTURE = "pass --allow-future (library: allow_future=True)"


def _log_day(name: str) -> str | None:
    """The day of a log folder name ``dt=YYYY-MM-DD``, else None."""
    try:
        return parse_dt(name[3:]).isoformat() if name.startswith("dt=") else None
    except ConfigError:
        return None


def log_days(lake: Lake) -> list[str]:
    """Days that have a raw log folder (producers need not write manifests).

    Other names are ignored (see ``_stray_notes``): a stray ``dt=2026-01-02.bak`` sorted between real days and
    blocked every later one as "not ingested yet".
    """
    return sorted(d for d in map(_log_day, lake.storage.list_dir(lake.uri(INTERACTIONS))) if d is not None)


def _stray_notes(lake: Lake) -> list[str]:
    names = lake.storage.list_dir(lake.uri(INTERACTIONS))
    return [
        f"{shown_name(lake.uri(INTERACTIONS, n))}: ignored, not a log folder dt=YYYY-MM-DD"
        for n in names
        if not _log_day(n)
    ]


def _log_files(lake: Lake, dt: str) -> tuple[dict[str, SourceFile], list[str]]:
    """The day's log files by name (each checksummed as a stream, never held whole), and what was not read, each
    named with why (never skipped silently).

    Only regular files are read (``Storage.entries``: a FIFO blocked the read, a directory crashed it, a symlink
    led outside the lake). A name is a name: the file is read by the path built from it, never by a URI parsed
    again (``a.csv#.jsonl`` was read as ``a.csv``). A file listed but not found by its name (a store that rewrites
    names) is named and counted, not a failed day.
    """
    folder = lake.partition(INTERACTIONS, dt)
    files, skipped = {}, []
    for name, kind in sorted(lake.storage.entries(folder).items()):
        shown = shown_name(name)
        if name == MANIFEST:  # a producer's manifest (replay, synthetic), not a log
            continue
        if kind != "file":
            skipped.append(f"{shown} ({NOT_READ[kind]})")
        elif not ingest_mod.is_log_file(name):
            skipped.append(f"{shown} (not a log file name: {'/'.join(ingest_mod.LOG_SUFFIXES)}, no leading _ or .)")
        else:
            try:
                files[name] = lake.storage.digest(join_uri(folder, name))
            except InputError:
                skipped.append(f"{shown} (listed, but no file of that name could be read)")
    return files, skipped


#: A day's logs of at least this many bytes get a progress bar (MiB read) while they are validated.
PROGRESS_BYTES = 64 << 20


def _validate_logs(lake: Lake, dt: str, files: dict[str, SourceFile], cfg: IngestConfig) -> ingest_mod.ValidatedDay:
    """The day's log files validated as streams, in bounded memory (``ingest_mod.DayValidator``).

    Each file is read once more after ``_log_files`` checksummed it (Parquet twice: checksummed, then read by row
    group from its footer), and must still have that checksum: a file rewritten meanwhile fails the ingest
    (InputError) rather than publish rows of other bytes than the fingerprint names.
    """
    total = sum(f.size for f in files.values())
    bar = progress_bar(-(-total // 2**20), desc=f"ingest dt={dt}", unit="MiB") if total >= PROGRESS_BYTES else None
    pending = 0

    def on_read(n: int) -> None:
        nonlocal pending
        pending += n
        if bar is not None and pending >= 2**20:
            bar.update(pending // 2**20)
            pending %= 2**20

    validator = ingest_mod.DayValidator(dt)
    for name, source in files.items():
        parquet = name.lower().endswith(".parquet")
        with lake.storage.open_read(source.uri, seekable=parquet) as stream:
            reader = DigestReader(stream, on_read)
            if parquet:
                reader.drain()
                stream.seek(0)
                validator.add_file(name, stream, cfg.allow_extra_columns)
            else:
                validator.add_file(name, reader, cfg.allow_extra_columns)
                reader.drain()
        if (reader.hexdigest(), reader.size) != (source.sha256, source.size):
            raise InputError(
                f"{source.uri}: changed while dt={dt} was being ingested ({source.size:,} -> {reader.size:,} "
                "bytes, or other bytes); ingest the day again"
            )
    if bar is not None:
        bar.close()
    return validator.finish()


def _with_logs(lake: Lake, days: list[str]) -> list[str]:
    """The ``days`` whose folder holds a log file: a folder without one is not a day with logs (``ingest`` does not
    publish it), so it is neither pending nor late. A listing per day asked, nothing read."""
    return [
        d
        for d in days
        if any(
            kind == "file" and ingest_mod.is_log_file(name)
            for name, kind in lake.storage.entries(lake.partition(INTERACTIONS, d)).items()
        )
    ]


LISTING = "listing"  # in a sequences manifest's source: the day's log files as listed when they were read


def _log_listings(lake: Lake, dt: str | None = None) -> dict[str, dict[str, list]]:
    """Day -> {log file name: [size, version]} from one listing of the interactions folder (of day ``dt`` only
    when given): the log files a day's ingest reads, without opening any."""
    root = lake.uri(INTERACTIONS) if dt is None else lake.partition(INTERACTIONS, dt)
    out: dict[str, dict[str, list]] = {}
    for rel, (size, version) in lake.storage.file_stats(root).items():
        folder, _, name = rel.rpartition("/") if dt is None else ("", "", rel)
        day = _log_day(folder) if dt is None else dt
        if day is not None and name and "/" not in name and ingest_mod.is_log_file(name):
            out.setdefault(day, {})[name] = [size, version]
    return out


def _listing_change(lake: Lake, day: str, manifest: dict, now: dict[str, list]) -> str | None:
    """How day ``day``'s log files differ from those it was ingested from, or None.

    Names and sizes come from the listings alone. A file of equal size whose version changed (a rewrite, a touch,
    a chmod) is read and compared by checksum, only then. A file removed since (a retention policy) is no change:
    what was ingested from it is still right.
    """
    source = manifest.get("source", {})
    recorded = source.get(LISTING)
    if recorded is None:  # ingested before listings were recorded: nothing to compare
        return None
    changes = [f"{shown_name(n)} added ({now[n][0]:,} bytes)" for n in sorted(set(now) - set(recorded))]
    for name in sorted(set(now) & set(recorded)):
        (size, version), (old_size, old_version) = now[name], recorded[name]
        if size != old_size:
            changes.append(f"{shown_name(name)}: {old_size:,} -> {size:,} bytes")
        elif version != old_version:
            digest = lake.storage.digest(join_uri(lake.partition(INTERACTIONS, day), name))
            if digest.sha256 != source.get("files", {}).get(name):
                changes.append(f"{shown_name(name)}: its content changed ({size:,} bytes)")
    return "; ".join(changes) or None


def changed_days(lake: Lake, days: list[str] | None = None) -> dict[str, str]:
    """Ingested day -> how its logs changed since (``_listing_change``), for ``days`` (default: every ingested day).
    One listing of the interactions folder; a day's files are read only when the listing cannot tell."""
    days = lake.partitions(SEQUENCES) if days is None else days
    listings = _log_listings(lake)
    out = {}
    for day in days:
        why = _listing_change(lake, day, lake.require_manifest(SEQUENCES, day), listings.get(day, {}))
        if why:
            out[day] = why
    return out


def _vocab_sha256(vocab_manifest: dict) -> dict[str, str]:
    return {name: entry["sha256"] for name, entry in vocab_manifest["files"].items()}


def _state_problem(lake: Lake, dt: str, sequences_manifest: dict) -> str | None:
    """Why day ``dt``'s vocab and sequences do not belong together, or None.

    They are two partitions, published one after the other: a re-ingest killed between the two leaves both
    valid by checksum, the new vocab beside the old sequences. The sequences manifest names the vocab files it
    was built with; partitions from before that record are taken as consistent (nothing to compare).
    """
    built_with = sequences_manifest.get(VOCAB_RECORD)
    if built_with is None:
        return None
    vocab = lake.manifest(VOCAB, dt)
    if vocab is None:
        return "its vocab partition is not published (an interrupted ingest?)"
    if _vocab_sha256(vocab) != built_with:
        return "its vocab is not the one its sequences were built with (an interrupted re-ingest?)"
    return None


def _late_day_error(lake: Lake, day: str, last: str) -> OrderError:
    """Logs that arrived after later days were ingested: their rows are in no sequence, so say so and stop."""
    return OrderError(
        f"dt={day}: its logs were never ingested and days go in order, but later days (up to {last}) are "
        f"ingested already: its rows are in no sequence. To include them, remove {lake.uri(SEQUENCES)}/dt>{day} "
        f"and ingest again from {day}; to drop them, rename {lake.partition(INTERACTIONS, day)} (a folder not "
        "named dt=YYYY-MM-DD is ignored)"
    )


def ingest(lake: Lake, dt: str, cfg: IngestConfig, allow_future: bool = False) -> StepResult:
    """Validate day ``dt``'s logs, quarantine bad rows, extend the vocab and the cumulative sequences.

    Days go in order: a day before an already ingested one is refused, as is skipping a day that has logs.
    Re-ingesting a day with unchanged logs is a no-op, unless its vocab and sequences do not belong together
    (a killed re-ingest): then it runs again. A republished day hides its stale ``samples`` partition.

    A day without a log file (no folder yet, or nothing in it to read) is not published: there is nothing to
    train on, and an empty day ingested before its logs arrived refused them later as out of order; it comes back
    with a note. A day after tomorrow (UTC) is refused unless ``allow_future`` (``config.check_not_future``).
    """
    dt = Day(dt)
    listing = _log_listings(lake, dt).get(dt, {})  # before reading: a file rewritten meanwhile shows as changed
    files, skipped_files = _log_files(lake, dt)
    notes = _stray_notes(lake) + lake.stray_notes(*DAY_DATASETS)
    if skipped_files:
        notes.append(f"dt={dt}: {len(skipped_files)} entry(ies) not read: {'; '.join(skipped_files)}")
    fingerprint = {name: f.sha256 for name, f in files.items()}
    done = lake.partitions(SEQUENCES)
    later = [d for d in done if d > dt]
    if dt in done:
        manifest = lake.require_manifest(SEQUENCES, dt)
        problem = _state_problem(lake, dt, manifest)
        unchanged = manifest.get("source", {}).get("files") == fingerprint and manifest.get("config") == cfg.to_dict()
        if unchanged and problem is None:
            return StepResult("ingest", _ingest_uris(lake, dt), manifest.get("counts", {}), False, notes)
        if later:
            why = problem or "its logs or config changed since it was ingested"
            raise OrderError(
                f"dt={dt}: {why}, but later days {later[:3]} were built on it; re-ingest from {dt} onward after "
                f"removing {lake.uri(SEQUENCES)}/dt>{dt}"
            )
        if not files:
            was = len(manifest.get("source", {}).get("files") or {})
            raise InputError(
                f"dt={dt}: no log file in {lake.partition(INTERACTIONS, dt)}; the day was ingested from {was} "
                "file(s) and is kept as it is, not republished empty: restore its logs to ingest it again"
            )
    elif later and files:
        raise _late_day_error(lake, dt, later[-1])
    elif later:
        raise OrderError(f"dt={dt}: days must be ingested in order, and {later[-1]} is already ingested")
    check_not_future(dt, allow_future, ALLOW_FUTURE)  # only now: an unchanged future day above is a no-op
    previous = max((d for d in done if d < dt), default=None)
    never = _with_logs(lake, [d for d in log_days(lake) if d < dt and d not in done])
    if never and previous is not None and never[0] < previous:
        raise _late_day_error(lake, never[0], max(done))
    if never:
        raise OrderError(f"dt={dt}: day {never[0]} has logs that were not ingested yet; ingest it first")
    if not files:
        notes.append(
            f"dt={dt}: no log file in {lake.partition(INTERACTIONS, dt)} (an empty day): nothing to ingest, not "
            "published; ingest it once its logs arrive, before any later day"
        )
        counts = {"files": 0, "skipped_files": len(skipped_files), "rows_read": 0, "accepted": 0, "rejected": 0}
        return StepResult("ingest", _ingest_uris(lake, dt), counts | {"published": False}, False, notes)

    if previous is not None:
        prev_manifest = lake.require_manifest(SEQUENCES, previous)
        problem = _state_problem(lake, previous, prev_manifest)
        if problem:
            raise InputError(
                f"dt={previous}: {problem}; re-ingest it (ingest --dt {previous}) before ingesting dt={dt}"
            )
    day = _validate_logs(lake, dt, files, cfg)
    if previous is not None:
        users = read_user_vocab(lake, previous)
        items = lake.read(VOCAB, previous, "items.parquet")
        prev_identity = readers.chain_identity(prev_manifest)
        prev_total = prev_manifest.get("counts", {}).get("interactions_total")
    else:
        users, items = ingest_mod.empty_vocab("user_idx"), ingest_mod.empty_vocab("item_idx")
        prev_identity, prev_total = None, 0
    known_users = users.num_rows
    users, new_users = ingest_mod.extend_vocab(users, day.users, "user_id", "user_idx")
    items, new_items = ingest_mod.extend_vocab(items, day.items, "item_id", "item_idx")
    # Looked up once per distinct id, then spread over the events by their codes; each day array is released once
    # used (a 1 GB day's are hundreds of MB).
    item_idx = ingest_mod.lookup(items, day.items, "item_id", "item_idx")[day.item_codes]
    day.item_codes = None
    user_idx = ingest_mod.lookup(users, day.users, "user_id", "user_idx")[day.user_codes]
    user_ids = day.users.take(pa.array(day.user_codes))
    day.user_codes = None
    delta = sequence_log.delta_table(user_idx, user_ids, item_idx, day.ts_us)
    del user_idx, user_ids, item_idx
    rejects, unreadable, accepted, reject_counts = day.rejects, day.unreadable_files, day.accepted, day.reject_counts()
    del day  # the delta holds the events from here on
    ingest_mod.release_memory()
    read = accepted + rejects.num_rows
    if prev_total is None:  # a previous day whose manifest has no count: count it once (an older lake)
        prev_total = int(sum(list_lengths(read_sequences(lake, previous)[0].column("items"))))
    counts = {
        "files": len(files),
        "skipped_files": len(skipped_files),
        "rows_read": read,
        "accepted": accepted,
        "rejected": rejects.num_rows,
        **{f"rejected_{k}": v for k, v in reject_counts.items() if v},
        "users": users.num_rows,
        "new_users": new_users,
        "items": items.num_rows,
        "new_items": new_items,
        "interactions_total": int(prev_total) + accepted,
    }
    if rejects.num_rows:
        notes.append(f"dt={dt}: {rejects.num_rows:,} row(s) quarantined to {lake.partition(REJECTS, dt)}")
    config = cfg.to_dict()
    source = {"files": fingerprint, "previous_dt": previous, LISTING: {n: listing[n] for n in files if n in listing}}
    extra = {"counts": counts, "source": source}
    # Unreadable files are kept whole (copied by stream), so nothing is lost even when no row could be parsed.
    blobs = {f"files/{n}": files[n] for n in unreadable}
    # The delta goes to a local Parquet file (the bytes ``parquet_bytes`` gives) and is published from it by stream:
    # serialised in memory, a large day's delta (hundreds of MB) was held twice beside the table.
    with tempfile.TemporaryDirectory(prefix="dealrec-ingest-") as scratch:
        delta_file = {readers.DELTA: parquet_file(delta, os.path.join(scratch, readers.DELTA))}
        del delta
        ingest_mod.release_memory()
        identity = sequence_log.chain_sha256(prev_identity, delta_file[readers.DELTA].sha256)
        # Hidden before anything is republished, so a crash cannot leave samples of other sequences visible.
        if _hide_stale_samples(lake, dt, identity):
            notes.append(
                f"dt={dt}: {lake.partition(SAMPLES, dt)} hidden, it was built from the sequences this ingest replaced; "
                "run samples for this day again"
            )
        rejects_pub = lake.publish(REJECTS, dt, {"rejects.parquet": rejects}, config=config, extra=extra, blobs=blobs)
        vocab_files = {readers.NEW_USERS: users.slice(known_users), "items.parquet": items}
        vocab_pub = lake.publish(VOCAB, dt, vocab_files, config=config, extra=extra)
        # Last: a sequences manifest is what marks the day as ingested; it names the vocab it belongs with and chains
        # the day to the previous one (its identity).
        seq_extra = extra | {VOCAB_RECORD: _vocab_sha256(vocab_pub.manifest), readers.CHAIN: identity}
        seq_pub = lake.publish(SEQUENCES, dt, {}, config=config, extra=seq_extra, blobs=delta_file)
        if {k: seq_pub.manifest.get(k) for k in (VOCAB_RECORD, readers.CHAIN)} != {
            k: seq_extra[k] for k in (VOCAB_RECORD, readers.CHAIN)
        }:
            # An equal delta was a no-op that kept the old manifest, whose records name the vocab just replaced (or
            # the chain of a previous day that was re-ingested since).
            lake.withdraw(SEQUENCES, dt)
            seq_pub = lake.publish(SEQUENCES, dt, {}, config=config, extra=seq_extra, blobs=delta_file)
    changed = rejects_pub.changed or vocab_pub.changed or seq_pub.changed
    return StepResult("ingest", _ingest_uris(lake, dt), counts, changed, notes)


def _hide_stale_samples(lake: Lake, dt: str, identity: str) -> bool:
    """Hide ``samples/dt=<dt>`` when it was not built from the sequences of ``identity`` (or does not say what it
    was built from); True when it was hidden."""
    manifest = lake.manifest(SAMPLES, dt)
    if manifest is None:
        return False
    if manifest.get("source", {}).get("sequences_sha256") == identity:
        return False
    lake.withdraw(SAMPLES, dt)
    return True


def _ingest_uris(lake: Lake, dt: str) -> dict[str, str]:
    return {k: lake.partition(k, dt) for k in (SEQUENCES, VOCAB, REJECTS)}


def pending_days(lake: Lake) -> list[str]:
    """Log days after the last ingested one, in order, led by the last one when its logs changed since.

    A log day before it that was never ingested (its logs arrived late) is an OrderError: returning only the days
    after the last one dropped it silently, with "no pending days". So is an ingested day whose logs changed
    (``changed_days``) with later days built on it: "no pending days" hid that the lake no longer matches its logs.
    """
    done = lake.partitions(SEQUENCES)
    last = max(done, default="")
    days = log_days(lake)
    late = _with_logs(lake, [d for d in days if d < last and d not in done])  # a folder without logs is not late
    if late:
        raise _late_day_error(lake, late[0], last)
    changed = changed_days(lake, done)
    middle = [d for d in changed if d < last]
    if middle:
        day, later = middle[0], [d for d in done if d > middle[0]]
        shown = later[0] if len(later) == 1 else f"{later[0]}..{later[-1]} ({len(later)} days)"
        raise OrderError(
            f"dt={day}: its logs changed since it was ingested ({changed[day]}), but later days {shown} were built "
            f"on it; re-ingest from {day} onward after removing {lake.uri(SEQUENCES)}/dt>{day}"
        )
    return ([last] if last in changed else []) + [d for d in days if d > last]


def compact(lake: Lake, dt: str, cfg: CompactConfig) -> StepResult:
    """Write ``sequences_snapshot/dt=<dt>`` (the cumulative sequences and user map) once ``cfg.every_days`` days'
    deltas follow the last snapshot, and remove snapshots beyond the newest ``cfg.keep``; otherwise a no-op.

    Why apart from ingest: ingest writes only the day's events, so its cost follows the day; this step reads and
    writes the whole lake, once every few days, off ingest's path (the DAG runs it beside the surrogate).
    """
    dt = Day(dt)
    chain = readers.sequence_chain(lake, dt)
    counts = {"deltas_since_snapshot": len(chain.deltas), "every_days": cfg.every_days}
    uri = {"sequences_snapshot": lake.partition(SEQUENCES_SNAPSHOT, dt)}
    if len(chain.deltas) < cfg.every_days:
        base = f"the base at {chain.base_dt}" if chain.base else "the first day"
        note = f"compact dt={dt}: not due ({len(chain.deltas)} delta(s) after {base}, every {cfg.every_days})"
        return StepResult("compact", uri, counts | {"written": False}, False, [note])
    sequences, identity = read_sequences(lake, dt)
    users = sequences.select(["user_id", "user_idx"]).cast(USER_VOCAB_SCHEMA)
    files = {readers.FULL_SEQUENCES: sequences, readers.FULL_USERS: users}
    counts |= {"users": sequences.num_rows, "interactions": int(sum(list_lengths(sequences.column("items"))))}
    extra = {readers.CHAIN: identity, "counts": counts, "source": {"base_dt": chain.base_dt, "deltas": chain.deltas}}
    pub = lake.publish(SEQUENCES_SNAPSHOT, dt, files, config=cfg.to_dict(), extra=extra, inputs={"sequences": identity})
    removed = [d for d in lake.partitions(SEQUENCES_SNAPSHOT)[: -cfg.keep] if d != dt]
    for d in removed:
        lake.remove(SEQUENCES_SNAPSHOT, d)
    notes = [f"compact: removed snapshot(s) {', '.join(removed)} (keep {cfg.keep})"] if removed else []
    return StepResult("compact", uri, counts | {"written": True, "removed": len(removed)}, pub.changed, notes)


# ---------------------------------------------------------------------------------------------------------
# Samples
# ---------------------------------------------------------------------------------------------------------
def samples(lake: Lake, dt: str, cfg: SamplesConfig) -> StepResult:
    """Samples at ``dt`` from the cumulative sequences, split by day windows (see ``SamplesConfig``)."""
    dt = Day(dt)
    seqs, identity = read_sequences(lake, dt)
    split = samples_mod.time_split(seqs, dt, cfg.valid_days, cfg.test_days)
    # The identity of the sequences read, so a re-ingest that replaces them knows these samples are stale.
    source = {"sequences": lake.partition(SEQUENCES, dt), "sequences_sha256": identity}
    return _publish_samples(lake, SAMPLES, dt, split, cfg, source)


def samples_from_dataset(lake: Lake, dataset: str, cfg: SamplesConfig) -> StepResult:
    """Samples of an imported dataset with its own (the paper's) split: ``datasets/<name>/samples/``."""
    name = imported(dataset)
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
    trains, valids = split.column("train").to_pylist(), split.column("valid").to_pylist()
    # A user without training items has no train sample, and no valid row either (its history would be empty).
    counts["users_without_train"] = sum(1 for t in trains if not t)
    counts["valid_rows_dropped"] = sum(1 for t, v in zip(trains, valids) if not t and v)
    if not counts[samples_mod.TRAIN] and not counts[samples_mod.TEST]:
        # An empty table would replace the day's samples, and every later step would fail on it. (A day with test
        # rows but no train rows is kept: an early day's evaluation rows; the surrogate refuses to train on it.)
        windows = f"valid_days={cfg.valid_days}, test_days={cfg.test_days}: " if dt is not None else ""
        raise DegenerateError(
            f"samples {lake.partition(dataset, dt)}: {windows}the split leaves {counts[samples_mod.TRAIN]} train, "
            f"{counts[samples_mod.VALID]} valid and {counts[samples_mod.TEST]} test rows of {split.num_rows} users; "
            "nothing published"
        )
    pub = lake.publish(
        dataset, dt, {"samples.parquet": table}, config=cfg.to_dict(), extra={"counts": counts, "source": source}
    )
    return StepResult("samples", {"samples": pub.uri}, counts, pub.changed)


def ingest_until(lake: Lake, dt: str, cfg: IngestConfig, allow_future: bool = False) -> StepResult:
    """Ingest, in order, every day with logs that is not ingested yet up to ``dt``, then ``dt`` itself (a no-op when
    it is ingested and unchanged). The vocab is append-only and cumulative, so a daily run that finds earlier days
    missing catches up instead of failing. Returns the last day's result, with the days it went through.
    ``allow_future``: see ``ingest``."""
    dt = Day(dt)
    days = [d for d in pending_days(lake) if d < dt] + [dt]
    results = [ingest(lake, d, cfg, allow_future) for d in days]
    last = results[-1]
    counts = {"days_ingested": len(days), "first_dt": days[0]} | last.counts
    notes = [n for r in results for n in r.notes]
    return StepResult("ingest", last.uris, counts, any(r.changed for r in results), notes)
