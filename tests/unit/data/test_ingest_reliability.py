"""Ingest reliability (issue 14, items 1-5): a killed re-ingest, late logs, odd directory entries, ids that are not
UTF-8 and stale samples each get a clear error or a reject naming the file/row/day; nothing is dropped silently."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dealrec_tasks import steps
from dealrec_tasks.catalogue import INTERACTIONS, REJECTS, SAMPLES, SEQUENCES, VOCAB
from dealrec_tasks.cli import main
from dealrec_tasks.config import IngestConfig, SamplesConfig
from dealrec_tasks.errors import InputError, OrderError, PartitionNotFound
from dealrec_tasks.steps.data import VOCAB_RECORD, ingest_until
from dealrec_tasks.steps.readers import read_sequences
from dealrec_tasks.storage import MANIFEST, Lake, join_uri

REPO = Path(__file__).resolve().parents[3]
D1, D2, D3, D4 = "2026-03-01", "2026-03-02", "2026-03-03", "2026-03-04"


def _put(lake: Lake, dt: str, name: str, data: bytes) -> None:
    lake.storage.write_bytes(join_uri(lake.partition(INTERACTIONS, dt), name), data)


def _jsonl(events: list[tuple[str, str, str]]) -> bytes:
    return "\n".join(json.dumps({"user_id": u, "item_id": i, "ts": t}) for u, i, t in events).encode()


def _folder(lake: Lake, dt: str) -> Path:
    return Path(lake.storage.resolve(lake.partition(INTERACTIONS, dt))[1])


def _rejects(lake: Lake, dt: str) -> dict[tuple[str, int], dict]:
    return {(r["source_file"], r["row"]): r for r in lake.read(REJECTS, dt, "rejects.parquet").to_pylist()}


def _users(lake: Lake, dt: str) -> list[str]:
    return read_sequences(lake, dt)[0].column("user_id").to_pylist()


# ---------------------------------------------------------------------------------------------------------
# Item 1: vocab and sequences of a day belong together
# ---------------------------------------------------------------------------------------------------------
KILL_BEFORE_SEQUENCES = """
import os, signal, sys
from dealrec_tasks import steps
from dealrec_tasks.config import IngestConfig
from dealrec_tasks.storage import Lake

publish = Lake.publish

def publish_then_die(self, dataset, *args, **kwargs):
    if dataset == "sequences":
        os.kill(os.getpid(), signal.SIGKILL)
    return publish(self, dataset, *args, **kwargs)

Lake.publish = publish_then_die
steps.ingest(Lake(sys.argv[1]), sys.argv[2], IngestConfig())
"""


def _ingest_killed_before_sequences(lake: Lake, dt: str) -> None:
    env = os.environ | {"PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", KILL_BEFORE_SEQUENCES, lake.root, dt], env=env, capture_output=True, timeout=300
    )
    assert proc.returncode == -9, proc.stderr.decode()


def _resolved(lake: Lake, dt: str) -> dict[str, list[str]]:
    """Each user's items as item ids, through the day's own vocab."""
    items = {r["item_idx"]: r["item_id"] for r in lake.read(VOCAB, dt, "items.parquet").to_pylist()}
    rows = read_sequences(lake, dt)[0].to_pylist()
    return {r["user_id"]: [items[i] for i in r["items"]] for r in rows}


def _from_logs(*days: list[tuple[str, str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for events in days:
        for u, i, _ in sorted(events, key=lambda e: e[2]):
            out.setdefault(u, []).append(i)
    return out


DAY1 = [("a", "i1", f"{D1}T01:00:00Z"), ("b", "i2", f"{D1}T02:00:00Z")]
DAY2 = [("a", "i3", f"{D2}T05:00:00Z")]
DAY2_LATE_FILE = [("c", "i9", f"{D2}T00:30:00Z")]  # a new item before i3: every later item index shifts
DAY3 = [("b", "i3", f"{D3}T01:00:00Z"), ("c", "i9", f"{D3}T02:00:00Z")]


def test_killed_reingest_is_refused_by_the_next_day_and_repaired_by_reingesting(local_lake: Lake):
    lake = local_lake
    _put(lake, D1, "x.jsonl", _jsonl(DAY1))
    _put(lake, D2, "x.jsonl", _jsonl(DAY2))
    _put(lake, D3, "x.jsonl", _jsonl(DAY3))
    steps.ingest(lake, D1, IngestConfig())
    steps.ingest(lake, D2, IngestConfig())
    _put(lake, D2, "y.jsonl", _jsonl(DAY2_LATE_FILE))
    _ingest_killed_before_sequences(lake, D2)
    # Both partitions are still valid by checksum, but the new vocab sits beside the old sequences.
    lake.read(VOCAB, D2, "items.parquet") and lake.read(SEQUENCES, D2, "delta.parquet")

    with pytest.raises(
        InputError,
        match=rf"dt={D2}: its vocab is not the one its sequences were built with.*"
        rf"re-ingest it",
    ):
        steps.ingest(lake, D3, IngestConfig())
    assert steps.ingest(lake, D2, IngestConfig()).changed  # the re-ingest is allowed, and repairs
    assert _resolved(lake, D2) == _from_logs(DAY1, DAY2 + DAY2_LATE_FILE)
    steps.ingest(lake, D3, IngestConfig())
    assert _resolved(lake, D3) == _from_logs(DAY1, DAY2 + DAY2_LATE_FILE, DAY3)


def test_killed_reingest_with_the_old_logs_put_back_runs_again_instead_of_a_noop(local_lake: Lake):
    """The sequences' source fingerprint matches the logs again, but the vocab is the killed run's: not unchanged."""
    lake = local_lake
    _put(lake, D1, "x.jsonl", _jsonl(DAY1))
    steps.ingest(lake, D1, IngestConfig())
    late = [("c", "i9", f"{D1}T00:30:00Z")]
    _put(lake, D1, "y.jsonl", _jsonl(late))
    _ingest_killed_before_sequences(lake, D1)
    lake.storage.delete(join_uri(lake.partition(INTERACTIONS, D1), "y.jsonl"))  # the late file is withdrawn

    assert steps.ingest(lake, D1, IngestConfig()).changed
    assert _resolved(lake, D1) == _from_logs(DAY1)
    assert not steps.ingest(lake, D1, IngestConfig()).changed  # consistent now: a no-op again


def test_partitions_without_the_vocab_record_still_load(local_lake: Lake):
    lake = local_lake
    _put(lake, D1, "x.jsonl", _jsonl(DAY1))
    _put(lake, D2, "x.jsonl", _jsonl(DAY2))
    steps.ingest(lake, D1, IngestConfig())
    uri = join_uri(lake.partition(SEQUENCES, D1), MANIFEST)
    old = lake.storage.read_json(uri)
    del old[VOCAB_RECORD]  # as written before the record existed
    lake.storage.write_json(uri, old)
    assert not steps.ingest(lake, D1, IngestConfig()).changed
    steps.ingest(lake, D2, IngestConfig())
    assert _resolved(lake, D2) == _from_logs(DAY1, DAY2)


# ---------------------------------------------------------------------------------------------------------
# Item 2: late logs and names that are not read
# ---------------------------------------------------------------------------------------------------------
def test_late_logs_before_the_last_ingested_day_are_refused_not_dropped(local_lake: Lake, capsys):
    lake = local_lake
    _put(lake, D1, "x.jsonl", _jsonl(DAY1))
    _put(lake, D3, "x.jsonl", _jsonl(DAY3))
    steps.ingest(lake, D1, IngestConfig())
    steps.ingest(lake, D2, IngestConfig())  # no logs yet: nothing to ingest, not published
    steps.ingest(lake, D3, IngestConfig())
    _put(lake, D2, "x.jsonl", _jsonl(DAY2))  # ...which arrive now
    _put(lake, D4, "x.jsonl", _jsonl([("a", "i1", f"{D4}T01:00:00Z")]))
    with pytest.raises(OrderError, match="later days"):  # after D3 was ingested, so they are refused
        steps.ingest(lake, D2, IngestConfig())

    # A day that was never ingested at all (no folder when its run went by) is refused everywhere.
    d0 = "2026-02-28"
    _put(lake, d0, "x.jsonl", _jsonl([("z", "i1", f"{d0}T01:00:00Z")]))
    with pytest.raises(OrderError, match=rf"dt={d0}: its logs were never ingested"):
        steps.pending_days(lake)
    with pytest.raises(OrderError, match=rf"dt={d0}"):
        ingest_until(lake, D4, IngestConfig())
    with pytest.raises(OrderError, match=rf"dt={d0}"):
        steps.ingest(lake, D4, IngestConfig())
    with pytest.raises(OrderError, match=rf"dt={d0}"):
        steps.ingest(lake, d0, IngestConfig())
    root = lake.storage.resolve(lake.root)[1]
    assert main(["--lake", root, "ingest", "--all"]) == 2
    err = capsys.readouterr().err
    assert f"dt={d0}: its logs were never ingested" in err and "no pending days" not in err
    assert len(err.strip().splitlines()) == 1

    # Renaming the folder drops the day on purpose; the rename is noted, and the later days go on.
    os.rename(_folder(lake, d0), _folder(lake, d0).with_name(f"dt={d0}.late"))
    with pytest.raises(OrderError, match=rf"dt={D2}: its logs were never ingested"):  # D2's late logs, too
        steps.pending_days(lake)
    os.rename(_folder(lake, D2), _folder(lake, D2).with_name(f"dt={D2}.late"))
    assert steps.pending_days(lake) == [D4]
    result = steps.ingest(lake, D4, IngestConfig())
    assert any(f"dt={d0}.late: ignored" in n for n in result.notes)


def test_a_stray_folder_name_does_not_block_later_days(local_lake: Lake):
    lake = local_lake
    _put(lake, D1, "x.jsonl", _jsonl(DAY1))
    _put(lake, D2, "x.jsonl", _jsonl(DAY2))
    lake.storage.write_bytes(lake.uri(INTERACTIONS, f"dt={D1}.bak", "x.jsonl"), _jsonl(DAY1))
    lake.storage.write_bytes(lake.uri(INTERACTIONS, "dt=2026-02-30", "x.jsonl"), _jsonl(DAY1))
    assert steps.pending_days(lake) == [D1, D2]
    steps.ingest(lake, D1, IngestConfig())
    result = steps.ingest(lake, D2, IngestConfig())
    assert any(f"dt={D1}.bak: ignored, not a log folder" in n for n in result.notes)
    assert any("dt=2026-02-30: ignored" in n for n in result.notes)


def test_files_skipped_by_name_are_counted_and_named(local_lake: Lake):
    lake = local_lake
    _put(lake, D1, "x.jsonl", _jsonl(DAY1))
    for name in ("a.csv.gz", "b.tsv", "_tmp.csv", ".hidden.jsonl"):
        _put(lake, D1, name, b"user_id,item_id,ts\n")
    os.symlink(_folder(lake, D1) / "gone.csv", _folder(lake, D1) / "dangling.csv")
    result = steps.ingest(lake, D1, IngestConfig())
    assert result.counts["skipped_files"] == 5 and result.counts["files"] == 1
    note = next(n for n in result.notes if "not read" in n)
    for name in ("a.csv.gz", "b.tsv", "_tmp.csv", ".hidden.jsonl", "dangling.csv (a symlink, not followed)"):
        assert name in note


# ---------------------------------------------------------------------------------------------------------
# Item 3: only regular files are read
# ---------------------------------------------------------------------------------------------------------
def test_a_directory_named_like_a_log_is_skipped_not_a_crash(lake: Lake):
    _put(lake, D1, "x.jsonl", _jsonl(DAY1))
    _put(lake, D1, "nested.csv/inner.csv", b"user_id,item_id,ts\nq,i1,2026-03-01T03:00:00Z\n")
    result = steps.ingest(lake, D1, IngestConfig())
    assert result.counts["skipped_files"] == 1 and "nested.csv (a directory)" in " ".join(result.notes)
    assert sorted(_users(lake, D1)) == ["a", "b"]


def test_a_fifo_named_like_a_log_is_skipped_not_opened(local_lake: Lake):
    lake = local_lake
    _put(lake, D1, "x.jsonl", _jsonl(DAY1))
    fifo = _folder(lake, D1) / "pipe.csv"
    os.mkfifo(fifo)
    done = threading.Event()

    def unblock_readers() -> None:
        """Guard: a reader blocked opening the FIFO gets end-of-file, so a regression fails instead of hanging."""
        while not done.wait(0.1):
            with contextlib.suppress(OSError):  # ENXIO: nobody is reading, as it should be
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    guard = threading.Thread(target=unblock_readers, daemon=True)
    guard.start()
    try:
        result = steps.ingest(lake, D1, IngestConfig())
    finally:
        done.set()
        guard.join()
    assert result.counts["skipped_files"] == 1 and "pipe.csv (not a regular file)" in " ".join(result.notes)
    assert sorted(_users(lake, D1)) == ["a", "b"]


def test_a_symlink_is_not_followed(local_lake: Lake, tmp_path: Path):
    lake = local_lake
    _put(lake, D1, "x.jsonl", _jsonl(DAY1))
    outside = tmp_path / "outside.csv"
    outside.write_text(f"user_id,item_id,ts\nroot,i1,{D1}T03:00:00Z\n")
    os.symlink(outside, _folder(lake, D1) / "outside.csv")
    os.symlink("/etc/passwd", _folder(lake, D1) / "passwd.csv")
    result = steps.ingest(lake, D1, IngestConfig())
    notes = " ".join(result.notes)
    assert "outside.csv (a symlink, not followed)" in notes and "passwd.csv (a symlink, not followed)" in notes
    assert result.counts["skipped_files"] == 2 and result.counts["rejected"] == 0
    assert sorted(_users(lake, D1)) == ["a", "b"]
    assert lake.require_manifest(REJECTS, D1)["files"].keys() == {"rejects.parquet"}  # nothing copied


# ---------------------------------------------------------------------------------------------------------
# Item 4: ids that are not UTF-8, duplicated columns, out-of-range timestamps
# ---------------------------------------------------------------------------------------------------------
def _parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def test_ids_that_are_not_utf8_are_rejected_with_their_bytes_escaped(local_lake: Lake):
    lake = local_lake
    ok = f"{D1}T01:00:00Z"
    lines = [
        b'{"user_id": "u\xff1", "item_id": "i1", "ts": "' + ok.encode() + b'"}',
        b'{"user_id": "\\udcff", "item_id": "i1", "ts": "' + ok.encode() + b'"}',  # a lone surrogate escape
        b'{"user_id": "u2", "item_id": "i2", "ts": "' + ok.encode() + b'"}',
    ]
    _put(lake, D1, "a.jsonl", b"\n".join(lines))
    ids = pa.array([b"\xfe\xffbin", b"bin-ok"], pa.binary())
    table = pa.table({"user_id": ids, "item_id": ["i1", "i2"], "ts": [ok, ok]})
    _put(lake, D1, "b.parquet", _parquet(table))
    result = steps.ingest(lake, D1, IngestConfig())

    rejects = _rejects(lake, D1)
    assert {k: r["reason"].split(":")[0] for k, r in rejects.items()} == {
        ("a.jsonl", 1): "invalid_utf8",
        ("a.jsonl", 2): "invalid_utf8",
        ("b.parquet", 1): "invalid_utf8",
    }
    assert "u\\xff1" in rejects[("a.jsonl", 1)]["raw"]  # the byte, escaped, not U+FFFD
    assert json.loads(rejects[("b.parquet", 1)]["raw"])["user_id"] == "\\xfe\\xffbin"
    assert rejects[("b.parquet", 1)]["reason"] == "invalid_utf8: user_id \\xfe\\xffbin is not UTF-8"
    assert result.counts["rejected_invalid_utf8"] == 3
    assert sorted(_users(lake, D1)) == ["bin-ok", "u2"]  # UTF-8 bytes are an id, not "b'bin-ok'"


def test_a_duplicated_column_refuses_the_file_or_row(local_lake: Lake):
    lake = local_lake
    _put(lake, D1, "dup.csv", f"user_id,item_id,ts,ts\nu1,i1,{D1}T01:00:00Z,{D1}T02:00:00Z\n".encode())
    dup_key = f'{{"user_id": "u1", "user_id": "u2", "item_id": "i1", "ts": "{D1}T01:00:00Z"}}'
    _put(lake, D1, "dup.jsonl", dup_key.encode())
    columns = pa.table([["u1"], ["i1"], [f"{D1}T01:00:00Z"], ["x"]], names=["user_id", "item_id", "ts", "ts"])
    _put(lake, D1, "dup.parquet", _parquet(columns))
    result = steps.ingest(lake, D1, IngestConfig())

    rejects = _rejects(lake, D1)
    assert rejects[("dup.csv", 0)]["reason"] == "malformed: duplicated column(s) ts in the header of dup.csv"
    assert rejects[("dup.parquet", 0)]["reason"] == "malformed: duplicated column(s) ts in the header of dup.parquet"
    assert rejects[("dup.jsonl", 1)]["reason"] == "malformed: duplicated key(s) user_id"
    assert result.counts["accepted"] == 0 and len(rejects) == 3
    kept = lake.storage.read_bytes(join_uri(lake.partition(REJECTS, D1), "files/dup.csv"))
    assert kept.startswith(b"user_id,item_id,ts,ts\n")  # the whole file is kept


def test_an_out_of_range_parquet_timestamp_keeps_its_raw_value(local_lake: Lake):
    lake = local_lake
    ts = pa.array([2**62, -(2**62), 1772409600000000], pa.timestamp("us", tz="UTC"))  # the last: 2026-03-02
    _put(lake, D1, "t.parquet", _parquet(pa.table({"user_id": ["u1", "u2", "u3"], "item_id": ["i"] * 3, "ts": ts})))
    steps.ingest(lake, D1, IngestConfig())
    rejects = _rejects(lake, D1)
    raw = {row: json.loads(r["raw"])["ts"] for (_, row), r in rejects.items()}
    assert raw == {
        1: "4611686018427387904 us since 1970-01-01",
        2: "-4611686018427387904 us since 1970-01-01",
        3: "2026-03-02 00:00:00+00:00",
    }
    assert rejects[("t.parquet", 1)]["reason"] == f"wrong_day: ts {raw[1]} is outside {D1}"


# ---------------------------------------------------------------------------------------------------------
# Item 5: a republished day hides its stale samples
# ---------------------------------------------------------------------------------------------------------
def test_reingest_with_changed_logs_hides_the_days_samples(local_lake: Lake):
    lake = local_lake
    _put(lake, D1, "x.jsonl", _jsonl(DAY1))
    _put(lake, D2, "x.jsonl", _jsonl(DAY2))
    steps.ingest(lake, D1, IngestConfig())
    steps.ingest(lake, D2, IngestConfig())
    steps.samples(lake, D2, SamplesConfig())
    assert not steps.ingest(lake, D2, IngestConfig()).changed  # unchanged: the samples stay
    lake.require_manifest(SAMPLES, D2)

    _put(lake, D2, "y.jsonl", _jsonl([("a", "i9", f"{D2}T00:30:00Z")]))  # a's test targets change
    result = steps.ingest(lake, D2, IngestConfig())
    assert any(f"{SAMPLES}/dt={D2} hidden" in n for n in result.notes)
    with pytest.raises(PartitionNotFound, match="no published partition"):
        lake.read(SAMPLES, D2, "samples.parquet")
    assert steps.samples(lake, D2, SamplesConfig()).changed
    items = {r["item_idx"]: r["item_id"] for r in lake.read(VOCAB, D2, "items.parquet").to_pylist()}
    test_rows = [r for r in lake.read(SAMPLES, D2, "samples.parquet").to_pylist() if r["split"] == "test"]
    assert [(r["user_id"], [items[i] for i in r["targets"]]) for r in test_rows] == [("a", ["i9", "i3"])]
    identity = lake.require_manifest(SEQUENCES, D2)["chain_sha256"]
    assert lake.require_manifest(SAMPLES, D2)["source"]["sequences_sha256"] == identity


def test_a_changed_middle_day_is_named_from_the_listings(lake: Lake, capsys):
    """Issue 29, item 8: logs of a day changed after later days were built on it, and ``ingest --all`` said "no
    pending days". The sequences manifest records the listing each day was ingested from; a change is named in
    one line, by names and sizes alone (a file of equal size whose version changed is checked by checksum)."""
    _put(lake, D1, "x.jsonl", _jsonl(DAY1))
    _put(lake, D2, "x.jsonl", _jsonl(DAY2))
    _put(lake, D3, "x.jsonl", _jsonl(DAY3))
    for day in (D1, D2, D3):
        steps.ingest(lake, day, IngestConfig())
    assert steps.pending_days(lake) == [] and steps.changed_days(lake) == {}
    recorded = lake.require_manifest(SEQUENCES, D1)["source"]["listing"]
    assert list(recorded) == ["x.jsonl"] and recorded["x.jsonl"][0] == len(_jsonl(DAY1))

    # The same bytes written again (a new mtime, a new ETag on some stores) are no change.
    _put(lake, D1, "x.jsonl", _jsonl(DAY1))
    assert steps.pending_days(lake) == []

    # A row appended to D1: named with its sizes, and D2..D3 built on it.
    grown = _jsonl(DAY1 + [("late", "i9", f"{D1}T23:00:00Z")])
    _put(lake, D1, "x.jsonl", grown)
    size = f"{len(_jsonl(DAY1)):,} -> {len(grown):,} bytes"
    for call in (lambda: steps.pending_days(lake), lambda: ingest_until(lake, D4, IngestConfig())):
        with pytest.raises(OrderError) as err:
            call()
        assert str(err.value).startswith(
            f"dt={D1}: its logs changed since it was ingested (x.jsonl: {size}), but later days {D2}..{D3} (2 days) "
            "were built on it"
        )
    root = lake.storage.resolve(lake.root)[1] if lake.root.startswith("file://") else None
    if root:
        assert main(["--lake", root, "ingest", "--all"]) == 2
        err = capsys.readouterr().err
        assert f"dt={D1}: its logs changed" in err and "no pending days" not in err
        assert len(err.strip().splitlines()) == 1

    # Same size, other bytes: only the checksum can tell, and only this file is read for it.
    swapped = _jsonl(DAY1).replace(b'"i1"', b'"i7"', 1)
    assert len(swapped) == len(_jsonl(DAY1))
    _put(lake, D1, "x.jsonl", swapped)
    with pytest.raises(OrderError, match=rf"dt={D1}: its logs changed since it was ingested \(x.jsonl: its content"):
        steps.pending_days(lake)
    _put(lake, D1, "x.jsonl", _jsonl(DAY1))  # put back: nothing changed after all

    # A file added to a middle day is a change; one removed (a retention policy) is not.
    _put(lake, D2, "more.csv", b"user_id,item_id,ts\nq,i1,2026-03-02T05:00:00Z\n")
    with pytest.raises(OrderError, match=rf"dt={D2}: .*\(more.csv added \(\d+ bytes\)\), but later days {D3} were"):
        steps.pending_days(lake)
    lake.storage.delete(join_uri(lake.partition(INTERACTIONS, D2), "more.csv"))
    lake.storage.delete(join_uri(lake.partition(INTERACTIONS, D2), "x.jsonl"))
    assert steps.pending_days(lake) == []

    # The last day changed: nothing is built on it, so --all ingests it again (as ingest --dt would).
    _put(lake, D3, "x.jsonl", _jsonl(DAY3 + [("late", "i9", f"{D3}T23:00:00Z")]))
    assert steps.pending_days(lake) == [D3]
    result = ingest_until(lake, D3, IngestConfig())
    assert result.changed and steps.pending_days(lake) == []
    users = read_sequences(lake, D3)[0].column("user_id").to_pylist()
    assert "late" in users
