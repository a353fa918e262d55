"""Daily ingest: every kind of bad row is quarantined with a reason; vocab append-only; days in order."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dealrec_tasks import steps
from dealrec_tasks.catalogue import INTERACTIONS, REJECTS, SEQUENCES, VOCAB
from dealrec_tasks.config import IngestConfig
from dealrec_tasks.data import ingest as ingest_mod
from dealrec_tasks.errors import OrderError
from dealrec_tasks.steps.readers import read_sequences, read_user_vocab
from dealrec_tasks.storage import Lake, join_uri

DT = "2026-03-01"


def _put(lake: Lake, dt: str, name: str, data: bytes) -> None:
    lake.storage.write_bytes(join_uri(lake.partition(INTERACTIONS, dt), name), data)


def _parquet(rows: list[dict]) -> bytes:
    table = pa.Table.from_pylist(rows)
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def _rejects(lake: Lake, dt: str) -> list[dict]:
    return lake.read(REJECTS, dt, "rejects.parquet").to_pylist()


def test_each_fault_is_quarantined_with_file_row_and_reason(lake: Lake):
    csv_text = (
        "user_id,item_id,ts\n"
        "u1,i1,2026-03-01T08:00:00Z\n"  # row 2: ok
        "u2,i2,2026-03-01T09:00:00+02:00\n"  # row 3: ok (07:00 UTC)
        ",i3,2026-03-01T10:00:00Z\n"  # row 4: null user
        "u3,,2026-03-01T10:00:00Z\n"  # row 5: null item
        "u4,i4,2026-02-28T23:59:59Z\n"  # row 6: wrong day
        "u5,i5,not-a-time\n"  # row 7: malformed ts
        "u6,i6\n"  # row 8: too few fields
        "u1,i1,2026-03-01T08:00:00Z\n"  # row 9: duplicate of row 2
    )
    _put(lake, DT, "a.csv", csv_text.encode())
    jsonl = "\n".join(
        [
            json.dumps({"user_id": "u7", "item_id": "i7", "ts": "2026-03-01T11:00:00Z"}),  # ok
            "{broken",  # malformed JSON
            json.dumps(["not", "an", "object"]),
            json.dumps({"user_id": 42, "item_id": "i8", "ts": "2026-03-01T12:00:00Z"}),  # int id accepted as "42"
            json.dumps({"user_id": "u1", "item_id": "i1", "ts": "2026-03-01T08:00:00+00:00"}),  # dup across files
        ]
    )
    _put(lake, DT, "b.jsonl", jsonl.encode())
    _put(lake, DT, "c.csv", b"user_id,item_id,ts,price\nu9,i9,2026-03-01T01:00:00Z,3.5\n")
    _put(lake, DT, "d.parquet", b"PAR1 this is not parquet")
    result = steps.ingest(lake, DT, IngestConfig())

    rejects = {(r["source_file"], r["row"]): r for r in _rejects(lake, DT)}
    reasons = {k: v["reason"].split(":")[0] for k, v in rejects.items()}
    assert reasons == {
        ("a.csv", 4): "null_id",
        ("a.csv", 5): "null_id",
        ("a.csv", 6): "wrong_day",
        ("a.csv", 7): "malformed",
        ("a.csv", 8): "malformed",
        ("a.csv", 9): "duplicate",
        ("b.jsonl", 2): "malformed",
        ("b.jsonl", 3): "malformed",
        ("b.jsonl", 5): "duplicate",
        ("c.csv", 2): "unknown_columns",
        ("d.parquet", 0): "malformed",
    }
    assert "a.csv row 2" in rejects[("a.csv", 9)]["reason"]
    assert json.loads(rejects[("c.csv", 2)]["raw"])["price"] == "3.5"  # the whole row is kept
    assert rejects[("a.csv", 4)]["reason"] == "null_id: user_id is empty"
    assert result.counts["accepted"] == 4
    assert result.counts["rejected"] == 11
    assert result.counts["rows_read"] == 15
    assert result.counts["rejected_duplicate"] == 2
    # The unreadable file is kept whole beside the rejects.
    kept = lake.storage.read_bytes(join_uri(lake.partition(REJECTS, DT), "files/d.parquet"))
    assert kept == b"PAR1 this is not parquet"

    seqs = {r["user_id"]: r for r in read_sequences(lake, DT)[0].to_pylist()}
    items = {r["item_id"]: r["item_idx"] for r in lake.read(VOCAB, DT, "items.parquet").to_pylist()}
    assert set(seqs) == {"u1", "u2", "u7", "42"}
    assert seqs["u2"]["ts"][0].isoformat() == "2026-03-01T07:00:00+00:00"
    # Vocab numbered in order of first appearance in time: u2 (07:00) before u1 (08:00).
    assert items["i2"] == 1 and items["i1"] == 2


def test_extra_columns_allowed_by_config(local_lake: Lake):
    _put(local_lake, DT, "c.csv", b"user_id,item_id,ts,price\nu9,i9,2026-03-01T01:00:00Z,3.5\n")
    result = steps.ingest(local_lake, DT, IngestConfig(allow_extra_columns=True))
    assert result.counts["accepted"] == 1 and result.counts["rejected"] == 0


def test_parquet_logs_with_typed_timestamps(local_lake: Lake):
    import datetime as dt

    rows = [
        {"user_id": "u1", "item_id": "i1", "ts": dt.datetime(2026, 3, 1, 5, tzinfo=dt.UTC)},
        {"user_id": None, "item_id": "i1", "ts": dt.datetime(2026, 3, 1, 6, tzinfo=dt.UTC)},
        {"user_id": "u1", "item_id": "i2", "ts": dt.datetime(2026, 3, 2, 6, tzinfo=dt.UTC)},
    ]
    _put(local_lake, DT, "p.parquet", _parquet(rows))
    steps.ingest(local_lake, DT, IngestConfig())
    reasons = [r["reason"].split(":")[0] for r in _rejects(local_lake, DT)]
    assert reasons == ["null_id", "wrong_day"]


def test_parquet_ts_that_is_not_a_timestamp_is_rejected_not_a_crash(local_lake: Lake):
    """int64 epochs (unit unknown), date32 and all-null ts columns crashed the day (issue 14, item 3); a null ts in
    a string column was even accepted with no time. Each row is now a reject naming its raw value."""

    def put(name: str, ts: pa.Array, users: list[str]) -> None:
        n = len(users)
        table = pa.table({"user_id": users, "item_id": [f"i{k}" for k in range(n)], "ts": ts})
        sink = io.BytesIO()
        pq.write_table(table, sink)
        _put(local_lake, DT, name, sink.getvalue())

    epoch_us = 1772323200000000  # 2026-03-01T00:00:00Z in microseconds
    put("epoch.parquet", pa.array([epoch_us, epoch_us + 1], pa.int64()), ["u1", "u2"])
    put("date.parquet", pa.array([20513], pa.date32()), ["u3"])
    put("nulls.parquet", pa.nulls(2, pa.timestamp("us", tz="UTC")), ["u4", "u5"])
    put("null_text.parquet", pa.array([None, "2026-03-01T01:00:00Z"], pa.string()), ["u6", "u7"])
    res = steps.ingest(local_lake, DT, IngestConfig())
    rejects = {(r["source_file"], r["row"]): r["reason"] for r in _rejects(local_lake, DT)}
    assert rejects[("epoch.parquet", 1)] == f"malformed: ts {epoch_us} is not an ISO-8601 timestamp"
    assert rejects[("date.parquet", 1)] == "malformed: ts 2026-03-01 is not an ISO-8601 timestamp"
    assert rejects[("nulls.parquet", 2)] == "malformed: ts null is not an ISO-8601 timestamp"
    assert rejects[("null_text.parquet", 1)] == "malformed: ts null is not an ISO-8601 timestamp"
    assert len(rejects) == 6 and res.counts["accepted"] == 1  # u7, the one real timestamp: nothing lost
    users = read_sequences(local_lake, DT)[0].column("user_id").to_pylist()
    assert users == ["u7"]


def test_ids_that_are_nulls_written_as_text_are_rejected(local_lake: Lake):
    """ "null", "None", "nan" were accepted as ids (issue 14, item 4): each would be one user for every producer
    that writes nulls as text."""
    rows = [
        ("null", "i1", "2026-03-01T01:00:00Z"),
        ("None", "i1", "2026-03-01T01:00:00Z"),
        ("u1", " NaN ", "2026-03-01T01:00:00Z"),
        ("u2", "i2", "2026-03-01T01:00:00Z"),
        ("nullable-user", "i3", "2026-03-01T01:00:00Z"),
    ]
    _put(local_lake, DT, "log.jsonl", _day(rows))
    res = steps.ingest(local_lake, DT, IngestConfig())
    reasons = sorted(r["reason"] for r in _rejects(local_lake, DT))
    assert reasons == [
        "null_id: item_id is ' NaN ', a null written as text",
        "null_id: user_id is 'None', a null written as text",
        "null_id: user_id is 'null', a null written as text",
    ]
    assert res.counts["accepted"] == 2  # u2 and "nullable-user": only whole null words are refused


def _day(users_items: list[tuple[str, str, str]]) -> bytes:
    return "\n".join(json.dumps({"user_id": u, "item_id": i, "ts": t}) for u, i, t in users_items).encode()


def test_days_in_order_vocab_append_only_and_sequences_cumulative(local_lake: Lake):
    lake = local_lake
    _put(
        lake, "2026-03-01", "x.jsonl", _day([("a", "i1", "2026-03-01T01:00:00Z"), ("b", "i2", "2026-03-01T02:00:00Z")])
    )
    _put(
        lake, "2026-03-02", "x.jsonl", _day([("c", "i3", "2026-03-02T01:00:00Z"), ("a", "i3", "2026-03-02T03:00:00Z")])
    )
    _put(lake, "2026-03-04", "x.jsonl", _day([("a", "i1", "2026-03-04T05:00:00Z")]))

    with pytest.raises(OrderError, match="2026-03-01 has logs that were not ingested"):
        steps.ingest(lake, "2026-03-02", IngestConfig())
    steps.ingest(lake, "2026-03-01", IngestConfig())
    steps.ingest(lake, "2026-03-02", IngestConfig())
    empty = steps.ingest(lake, "2026-03-03", IngestConfig())  # no logs at all that day: fine
    assert empty.counts["accepted"] == 0 and "empty day" in empty.notes[0]
    steps.ingest(lake, "2026-03-04", IngestConfig())
    with pytest.raises(OrderError, match="in order"):
        steps.ingest(lake, "2026-02-28", IngestConfig())

    v1 = read_user_vocab(lake, "2026-03-01").to_pylist()
    v4 = read_user_vocab(lake, "2026-03-04").to_pylist()
    assert v4[: len(v1)] == v1  # yesterday's ids never change
    seq = {r["user_id"]: r["items"] for r in read_sequences(lake, "2026-03-04")[0].to_pylist()}
    items = {r["item_id"]: r["item_idx"] for r in lake.read(VOCAB, "2026-03-04", "items.parquet").to_pylist()}
    assert seq["a"] == [items["i1"], items["i3"], items["i1"]]
    assert seq["c"] == [items["i3"]]


def test_reingest_same_day_is_a_noop_and_changed_history_is_refused(local_lake: Lake):
    lake = local_lake
    _put(lake, "2026-03-01", "x.jsonl", _day([("a", "i1", "2026-03-01T01:00:00Z")]))
    _put(lake, "2026-03-02", "x.jsonl", _day([("a", "i2", "2026-03-02T01:00:00Z")]))
    first = steps.ingest(lake, "2026-03-01", IngestConfig())
    manifest = lake.require_manifest(SEQUENCES, "2026-03-01")
    again = steps.ingest(lake, "2026-03-01", IngestConfig())
    assert first.changed and not again.changed
    assert lake.require_manifest(SEQUENCES, "2026-03-01") == manifest
    steps.ingest(lake, "2026-03-02", IngestConfig())
    assert not steps.ingest(lake, "2026-03-01", IngestConfig()).changed  # unchanged logs: still fine
    _put(lake, "2026-03-01", "y.jsonl", _day([("b", "i1", "2026-03-01T02:00:00Z")]))  # a late file arrives
    with pytest.raises(OrderError, match="later days"):
        steps.ingest(lake, "2026-03-01", IngestConfig())


def test_append_to_sequences_matches_a_plain_loop():
    rng = np.random.default_rng(3)
    users = pa.table({"user_id": [f"u{i}" for i in range(1, 21)], "user_idx": pa.array(range(1, 21), pa.int32())})
    expected: dict[int, list[tuple[int, int]]] = {}
    seqs = None
    t = 0
    for _ in range(4):
        n = int(rng.integers(0, 30))
        u = rng.integers(1, 21, size=n)
        i = rng.integers(1, 50, size=n)
        ts = t + np.arange(n) * 1000
        t += 10**9
        for uu, ii, tt in zip(u, i, ts):
            expected.setdefault(int(uu), []).append((int(ii), int(tt)))
        seqs = ingest_mod.append_to_sequences(seqs, users, u, i, ts)
    got = {r["user_idx"]: r for r in seqs.to_pylist()}
    assert sorted(got) == sorted(expected)
    for uu, events in expected.items():
        assert got[uu]["items"] == [e[0] for e in events]
        assert got[uu]["user_id"] == f"u{uu}"


def test_the_id_contract_rejects_what_is_not_an_id_and_keeps_its_raw_value(local_lake: Lake):
    """Issue 29, item 6: Parquet ids of float, bool, list or struct type were turned into text (``True`` merged with
    user "1"), padded ids became second users, ids with control characters or 1 MB long were accepted, and JSON
    ids 1.5, true or ["a"] became ``null_id`` with the value lost."""
    ts = "2026-03-01T01:00:00Z"
    huge = "u" * (1 << 20)
    _put(local_lake, DT, "floats.parquet", _parquet([{"user_id": 1.5, "item_id": "i1", "ts": ts}]))
    _put(local_lake, DT, "bools.parquet", _parquet([{"user_id": True, "item_id": "i1", "ts": ts}]))
    _put(local_lake, DT, "lists.parquet", _parquet([{"user_id": ["a"], "item_id": "i1", "ts": ts}]))
    _put(local_lake, DT, "structs.parquet", _parquet([{"user_id": {"a": 1}, "item_id": "i1", "ts": ts}]))
    _put(local_lake, DT, "ints.parquet", _parquet([{"user_id": 1, "item_id": "i2", "ts": ts}]))
    lines = [
        {"user_id": 1.5, "item_id": "i1", "ts": ts},
        {"user_id": True, "item_id": "i1", "ts": ts},
        {"user_id": ["a"], "item_id": "i1", "ts": ts},
        {"user_id": {"a": 1}, "item_id": "i1", "ts": ts},
        {"user_id": "1", "item_id": "i1", "ts": ts},  # the same user as the Parquet integer 1
        {"user_id": " U000001 ", "item_id": "i1", "ts": ts},
        {"user_id": "U000001", "item_id": "i\u0000x", "ts": ts},
        {"user_id": "U000001", "item_id": "i\nx", "ts": ts},
        {"user_id": "U000001", "item_id": "i\tx", "ts": ts},
        {"user_id": huge, "item_id": "i1", "ts": ts},
        {"user_id": "U000001", "item_id": "i3", "ts": ts},
        {"user_id": "Ünïcode-ü", "item_id": "i3", "ts": ts},
    ]
    _put(local_lake, DT, "log.jsonl", "\n".join(json.dumps(x) for x in lines).encode())
    res = steps.ingest(local_lake, DT, IngestConfig())
    rejects = {(r["source_file"], r["row"]): r for r in _rejects(local_lake, DT)}
    reasons = {k: r["reason"] for k, r in rejects.items()}
    assert reasons[("floats.parquet", 1)] == "bad_id: user_id is a Parquet double column (ids are text or integers)"
    assert reasons[("bools.parquet", 1)] == "bad_id: user_id is a Parquet bool column (ids are text or integers)"
    assert reasons[("lists.parquet", 1)].startswith("bad_id: user_id is a Parquet list<")
    assert reasons[("structs.parquet", 1)].startswith("bad_id: user_id is a Parquet struct<")
    assert reasons[("log.jsonl", 1)] == (
        "bad_id: user_id is a JSON number with a fraction or exponent (ids are text or integers)"
    )
    assert reasons[("log.jsonl", 2)] == "bad_id: user_id is a JSON boolean (ids are text or integers)"
    assert reasons[("log.jsonl", 3)] == "bad_id: user_id is a JSON array (ids are text or integers)"
    assert reasons[("log.jsonl", 4)] == "bad_id: user_id is a JSON object (ids are text or integers)"
    assert reasons[("log.jsonl", 6)] == "bad_id: user_id ' U000001 ' has leading or trailing whitespace"
    assert reasons[("log.jsonl", 7)] == "bad_id: item_id 'i\\x00x' holds a control character (U+0000)"
    assert reasons[("log.jsonl", 8)] == "bad_id: item_id 'i\\nx' holds a control character (U+000A)"
    assert reasons[("log.jsonl", 9)] == "bad_id: item_id 'i\\tx' holds a control character (U+0009)"
    assert reasons[("log.jsonl", 10)] == "bad_id: user_id is 1,048,576 characters long (at most 256)"
    # Every raw value is kept as it was read: the type, the padding, the whole 1 MB id.
    raw = {k: json.loads(r["raw"]) for k, r in rejects.items()}
    assert raw[("floats.parquet", 1)]["user_id"] == 1.5 and raw[("bools.parquet", 1)]["user_id"] is True
    assert raw[("lists.parquet", 1)]["user_id"] == ["a"] and raw[("structs.parquet", 1)]["user_id"] == {"a": 1}
    assert [raw[("log.jsonl", k)]["user_id"] for k in (1, 2, 3, 4)] == [1.5, True, ["a"], {"a": 1}]
    assert raw[("log.jsonl", 6)]["user_id"] == " U000001 " and raw[("log.jsonl", 10)]["user_id"] == huge
    assert raw[("log.jsonl", 7)]["item_id"] == "i\u0000x"
    assert res.counts["rejected_bad_id"] == 13 and res.counts["accepted"] == 4
    users = sorted(read_sequences(local_lake, DT)[0].column("user_id").to_pylist())
    assert users == ["1", "U000001", "Ünïcode-ü"]  # the integer 1 and the text "1" are one user; nothing else


def test_id_contract_in_csv_logs(local_lake: Lake):
    """A CSV id is text as written: padding and control characters are refused, not stripped into another id."""
    text = (
        'user_id,item_id,ts\n"u1 ",i1,2026-03-01T01:00:00Z\n'
        'u1,"i\x1f",2026-03-01T01:00:00Z\nu1,i1,2026-03-01T02:00:00Z\n'
    )
    _put(local_lake, DT, "log.csv", text.encode())
    res = steps.ingest(local_lake, DT, IngestConfig())
    reasons = sorted(r["reason"] for r in _rejects(local_lake, DT))
    assert reasons == [
        "bad_id: item_id 'i\\x1f' holds a control character (U+001F)",
        "bad_id: user_id 'u1 ' has leading or trailing whitespace",
    ]
    assert res.counts["accepted"] == 1
