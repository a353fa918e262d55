"""Issue 29, item 12: ingest reads a day as streams, in chunks of rows, and holds only compact arrays of the
accepted rows (a 200 MB CSV day peaked at 5.3 GB). Chunking must not change a byte of what is published: chunk
sizes of a few rows (duplicates across chunk boundaries and files, a decode error late in a CSV) give the files of
one chunk, and a plain-Python reading of the rules gives the same rejects, sequences and vocab."""

from __future__ import annotations

import codecs
import datetime as dt_mod
import io
import json
import random
import re

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dealrec_tasks import steps
from dealrec_tasks.catalogue import INTERACTIONS, REJECTS, SEQUENCES, VOCAB
from dealrec_tasks.config import IngestConfig
from dealrec_tasks.data import ingest as ingest_mod
from dealrec_tasks.errors import InputError
from dealrec_tasks.steps import data as data_steps
from dealrec_tasks.steps.readers import read_sequences, read_user_vocab
from dealrec_tasks.storage import Lake, SourceFile, join_uri

DT = "2026-03-01"
T = f"{DT}T01:00:00Z"


def _put(lake: Lake, name: str, data: bytes, dt: str = DT) -> None:
    lake.storage.write_bytes(join_uri(lake.partition(INTERACTIONS, dt), name), data)


def _parquet(table: pa.Table, row_group_size: int) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=row_group_size)
    return sink.getvalue()


def _tiny_chunks(monkeypatch, rows: int = 2, block: int = 3, read: int = 5) -> None:
    """Chunks of ``rows`` rows, day-wide passes over parts of ``block`` rows, ``read`` bytes per read."""
    monkeypatch.setattr(ingest_mod, "CHUNK_ROWS", rows)
    monkeypatch.setattr(ingest_mod, "_BLOCK", block)
    monkeypatch.setattr(ingest_mod, "READ_BLOCK", read)


def _published(lake: Lake, dt: str = DT) -> dict:
    """The sha256 of every file ingest published for the day."""
    datasets = (REJECTS, VOCAB, SEQUENCES)
    return {ds: {n: e["sha256"] for n, e in lake.require_manifest(ds, dt)["files"].items()} for ds in datasets}


LATE_BAD_BYTE = b"user_id,item_id,ts\n" + b"".join(f"z{k},i1,{T}\n".encode() for k in range(20)) + b"z,i\xff,x\n"


def _rich_day(lake: Lake) -> None:
    """Every path of the parsers and rules, with duplicates across chunks and files."""
    csv = (
        "\ufeffuser_id,item_id,ts\r\n"
        f"u1,i1,{T}\r\n"  # row 2
        f"u2,i2,{DT}T09:00:00+02:00\r\n"
        "\r\n"  # blank
        f'"u\n3",i3,{T}\r\n'  # a quoted newline: an id with a control character; rows 5-6
        f"u1,i1,{T}\r\n"  # row 7: duplicate of row 2
        f"u4,i4\r\n"  # 2 fields
        f'u5,"i5"x,{T}\r\n'
        f",i6,{T}\r\n"
        f"null,i6,{T}\r\n"
        f"u7,i7,2026-02-28T23:00:00Z\r\n"
        f"u8,i8,not a time\r"  # a lone CR ends this line
        f"u9,i9,{DT}T00:00:00.1234567Z\n"
        f"u9,i9,9999-12-31T10:00:00Z\n"  # wrong day (alone it parses: not malformed because of the line above)
        f"u1,i2,{DT}T00:30:00Z\n"
    ).encode()
    _put(lake, "a.csv", csv)
    lines = [
        {"user_id": "u1", "item_id": "i1", "ts": f"{DT}T01:00:00+00:00"},  # duplicate of a.csv row 2
        {"user_id": 7, "item_id": "i2", "ts": f"{DT}T02:00:00Z"},
        {"user_id": True, "item_id": "i2", "ts": T},
        {"user_id": "u2", "item_id": "i2", "ts": f"{DT}T07:00:00Z"},  # duplicate of a.csv row 3 (07:00 UTC)
    ]
    jsonl = [json.dumps(x).encode() for x in lines] + [
        b"{broken",
        b"",
        b'{"user_id": "u\xff", "item_id": "i", "ts": 1}',
    ]
    _put(lake, "b.jsonl", b"\r\n".join(jsonl))
    ts = pa.array(
        [dt_mod.datetime(2026, 3, 1, h, tzinfo=dt_mod.UTC) for h in (3, 4, 3, 5, 6)], pa.timestamp("ms", tz="UTC")
    )
    table = pa.table({"user_id": ["p1", "p2", "p1", None, "7"], "item_id": ["i1", "i1", "i1", "i1", "i2"], "ts": ts})
    _put(lake, "c.parquet", _parquet(table, row_group_size=2))  # row 3 repeats row 1 in another row group
    _put(lake, "d.csv", LATE_BAD_BYTE)  # refused whole: its 20 good rows come before the bad byte
    _put(lake, "e.csv", b"user_id,item_id,ts,ts\n" + f"u1,i1,{T},{T}\n".encode())
    _put(lake, "f.parquet", b"PAR1 not a parquet file")


@pytest.mark.parametrize("sizes", [(1, 1, 1), (2, 3, 5), (3, 7, 64)])
def test_chunk_sizes_do_not_change_a_published_byte(tmp_path, monkeypatch, sizes):
    one = Lake(str(tmp_path / "one"))
    _rich_day(one)
    steps.ingest(one, DT, IngestConfig())
    chunked = Lake(str(tmp_path / "chunked"))
    _rich_day(chunked)
    _tiny_chunks(monkeypatch, *sizes)
    steps.ingest(chunked, DT, IngestConfig())
    assert _published(chunked) == _published(one)

    rejects = {(r["source_file"], r["row"]): r for r in chunked.read(REJECTS, DT, "rejects.parquet").to_pylist()}
    assert rejects[("a.csv", 7)]["reason"] == "duplicate: of a.csv row 2"
    assert rejects[("b.jsonl", 1)]["reason"] == "duplicate: of a.csv row 2"
    assert json.loads(rejects[("b.jsonl", 1)]["raw"])["ts"] == f"{DT}T01:00:00+00:00"  # its own raw value
    assert rejects[("b.jsonl", 4)]["reason"] == "duplicate: of a.csv row 3"
    assert rejects[("c.parquet", 3)]["reason"] == "duplicate: of c.parquet row 1"
    assert json.loads(rejects[("c.parquet", 3)]["raw"])["ts"] == "2026-03-01 03:00:00+00:00"
    assert rejects[("a.csv", 15)]["reason"] == "wrong_day: ts 9999-12-31 10:00:00+00:00 is outside 2026-03-01"
    try:
        LATE_BAD_BYTE.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        whole = f"malformed: not UTF-8 ({exc})"
    assert [r for k, r in rejects.items() if k[0] == "d.csv"] == [
        {"source_file": "d.csv", "row": 0, "reason": whole, "raw": ""}
    ]
    assert rejects[("e.csv", 0)]["reason"] == "malformed: duplicated column(s) ts in the header of e.csv"
    assert list(rejects) == sorted(rejects)  # by file, then row
    users = read_sequences(chunked, DT)[0].column("user_id").to_pylist()
    assert not any(u.startswith("z") for u in users)  # nothing of the refused file
    kept = chunked.storage.read_bytes(join_uri(chunked.partition(REJECTS, DT), "files/d.csv"))
    assert kept == LATE_BAD_BYTE


def test_ingest_never_reads_a_log_file_whole(lake: Lake, monkeypatch):
    """The structural side of the memory bound: a storage whose ``read_bytes`` refuses log files (the old ingest
    read every file of the day whole) ingests, re-ingests as a no-op, and names a changed day."""
    _put(lake, "a.csv", f"user_id,item_id,ts\nu1,i1,{T}\nu2,i2,{T}\n".encode())
    _put(lake, "b.jsonl", json.dumps({"user_id": "u3", "item_id": "i1", "ts": T}).encode())
    table = pa.table({"user_id": ["u4"], "item_id": ["i1"], "ts": pa.array([T]).cast(pa.timestamp("us", tz="UTC"))})
    _put(lake, "c.parquet", _parquet(table, 1))
    bad = b"user_id,item_id,ts\n" + b"u,i,x\n" * 1000 + b"\xff"
    _put(lake, "d.csv", bad)
    real = lake.storage.read_bytes

    def read_bytes(uri: str) -> bytes:
        if f"/{INTERACTIONS}/" in uri:
            raise AssertionError(f"{uri} read whole")
        return real(uri)

    monkeypatch.setattr(lake.storage, "read_bytes", read_bytes)
    result = steps.ingest(lake, DT, IngestConfig())
    assert result.counts["accepted"] == 4 and sorted(read_sequences(lake, DT)[0].column("user_id").to_pylist()) == [
        "u1", "u2", "u3", "u4"
    ]  # fmt: skip
    assert real(join_uri(lake.partition(REJECTS, DT), "files/d.csv")) == bad  # kept whole, copied as a stream
    assert not steps.ingest(lake, DT, IngestConfig()).changed
    steps.ingest(lake, "2026-03-02", IngestConfig())  # no logs: not published
    _put(lake, "b.jsonl", json.dumps({"user_id": "u5", "item_id": "i1", "ts": T}).encode())  # equal size, new bytes
    _put(lake, "x.jsonl", b"", dt="2026-03-02")
    steps.ingest(lake, "2026-03-02", IngestConfig())
    assert data_steps.changed_days(lake) == {DT: "b.jsonl: its content changed (64 bytes)"}


def test_a_log_rewritten_while_it_is_ingested_fails_the_day(local_lake: Lake, monkeypatch):
    """The fingerprint (a first pass) names the bytes the rows come from (a second pass), or nothing is published."""
    _put(local_lake, "a.csv", f"user_id,item_id,ts\nu1,i1,{T}\n".encode())
    digest = local_lake.storage.digest
    monkeypatch.setattr(local_lake.storage, "digest", lambda uri: SourceFile(uri, "0" * 64, digest(uri).size))
    with pytest.raises(InputError, match=r"a\.csv: changed while dt=2026-03-01 was being ingested"):
        steps.ingest(local_lake, DT, IngestConfig())
    assert local_lake.partitions(SEQUENCES) == []


def test_stream_decoding_and_lines_match_whole_text():
    """The CSV text decoded block by block (a BOM dropped, a character or a CR LF split between blocks) gives the
    lines and the refusal, byte position included, of decoding the whole file; JSON lines those of splitlines."""
    rng = random.Random(0)
    pieces = [b"a", b"\n", b"\r", b"\r\n", b",", "\u00e9".encode(), "\u20ac".encode(), "\U0001f600".encode()]
    pieces += [b"\xff", b"\xc3", b"\xe2\x82", codecs.BOM_UTF8, b"\xed\xa0\x80", b"\x80"]
    refused = 0
    for _ in range(3000):
        data = b"".join(rng.choice(pieces) for _ in range(rng.randrange(30)))
        if rng.random() < 0.5:
            data = data.decode("utf-8", "ignore").encode()
        if rng.random() < 0.3:
            data = codecs.BOM_UTF8 + data
        block = rng.choice([1, 2, 3, 5, 64])
        try:
            want = io.StringIO(data.decode("utf-8-sig"), newline="").readlines()
        except UnicodeDecodeError as exc:
            want = f"not UTF-8 ({exc})"
        try:
            got = list(ingest_mod._text_lines(ingest_mod._utf8_text(io.BytesIO(data), block)))
        except ingest_mod._Refused as exc:
            got, refused = str(exc), refused + 1
        assert got == want, (data, block)
        assert list(ingest_mod._byte_lines(io.BytesIO(data), block)) == data.splitlines(), (data, block)
    assert refused > 500


def test_a_timestamp_parses_alone_whatever_the_rows_beside_it():
    """pandas parsed a whole file at the finest resolution any text needed: one nanosecond text made 9999-12-31
    (accepted elsewhere) NaT, so a row's fate depended on its file, and with chunks on its chunk."""
    texts = ["9999-12-31T10:00:00Z", f"{DT}T00:00:00.1234567Z", "nope", None, "0001-01-01T00:00:00Z"]
    together = ingest_mod._parse_ts(pd.Series(texts, dtype=object))
    alone = [ingest_mod._parse_ts(pd.Series([t], dtype=object)).iloc[0] for t in texts]
    assert [str(v) for v in together] == [str(v) for v in alone]
    assert str(together[0]) == "9999-12-31 10:00:00+00:00" and str(together[1]) == "2026-03-01 00:00:00.123456+00:00"


# ---------------------------------------------------------------------------------------------------------
# A plain-Python reading of the rules (README "Ingest rules"), on CSV and JSON lines without quoting
# ---------------------------------------------------------------------------------------------------------
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _naive_ts(text) -> int | None:
    """Microseconds since the epoch, for the few shapes the random day writes."""
    if not isinstance(text, str) or not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)", text):
        return None
    moment = dt_mod.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return round(moment.timestamp()) * 10**6


def _naive_id(value, col: str) -> str | None:
    """The reason category an id value gets, or None."""
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return "null_id"
    if isinstance(value, str) and value.strip().lower() in {"null", "none", "nan", "nat", "undefined"}:
        return "null_id"
    if not isinstance(value, str):
        return "bad_id"
    if _CONTROL.search(value) or value != value.strip() or len(value) > 256:
        return "bad_id"
    return None


def _naive_day(files: dict[str, list[tuple[int, object, object, object] | tuple[int, str]]], dt: str):
    """files: name -> [(row, user, item, ts)] or [(row, reason)] for rows refused while parsing. Returns rejects
    {(file, row): reason category, duplicates with "of file row n"} and the accepted events in event order."""
    start = round(dt_mod.datetime.fromisoformat(dt + "T00:00:00+00:00").timestamp()) * 10**6
    rejects, seen, events = {}, {}, []
    for name in sorted(files):
        for entry in files[name]:
            if len(entry) == 2:
                rejects[(name, entry[0])] = entry[1]
                continue
            row, user, item, ts = entry
            why = _naive_id(user, "user_id") or _naive_id(item, "item_id")
            us = _naive_ts(ts)
            if why is None and us is None:
                why = "malformed"
            elif why is None and not start <= us < start + 86_400 * 10**6:
                why = "wrong_day"
            elif why is None and (user, item, us) in seen:
                why = "duplicate: of {} row {}".format(*seen[(user, item, us)])
            if why:
                rejects[(name, row)] = why
                continue
            seen[(user, item, us)] = (name, row)
            events.append((us, name, row, user, item))
    return rejects, sorted(events)


def test_ingest_equals_a_plain_python_reading_of_the_rules(local_lake: Lake, monkeypatch):
    rng = random.Random(12)
    users = ["u1", "u2", "u3", "U0001234567", " u4", "u5 ", "null", "None", "", "u\x07", "ü", "a b", "u" * 300]
    times = [f"{DT}T{h:02d}:{m:02d}:00Z" for h in (0, 5, 23) for m in (0, 59)]
    times += [f"{DT}T10:00:00+02:00", f"{DT}T00:30:00+01:00", "2026-02-28T23:59:59Z", "2026-03-02T00:00:00Z", "soon"]
    files: dict[str, list] = {}
    for name in ("a.csv", "b.jsonl", "c.csv"):
        rows, lines = [], []
        for row in range(1, 120):
            user, item, ts = rng.choice(users), rng.choice(["i1", "i2", "i3", "", "nan"]), rng.choice(times)
            if rng.random() < 0.05:  # a line the parser refuses
                lines.append("only,two" if name.endswith(".csv") else "{not json")
                rows.append((row + (name.endswith(".csv")), "malformed"))
                continue
            if name.endswith(".csv"):
                lines.append(f"{user},{item},{ts}")
                rows.append((row + 1, user or None, item or None, ts))
            else:
                value = 7 if user == "U0001234567" and rng.random() < 0.5 else user
                lines.append(json.dumps({"user_id": value, "item_id": item, "ts": ts}))
                rows.append((row, str(value), item, ts))
        text = "\n".join(lines) + "\n"
        _put(local_lake, name, (("user_id,item_id,ts\n" + text) if name.endswith(".csv") else text).encode())
        files[name] = rows
    _tiny_chunks(monkeypatch, rows=7, block=11, read=64)
    steps.ingest(local_lake, DT, IngestConfig())

    want_rejects, events = _naive_day(files, DT)
    got = local_lake.read(REJECTS, DT, "rejects.parquet").to_pylist()
    shown = {(r["source_file"], r["row"]): r["reason"] for r in got}
    assert {k: v if v.startswith("duplicate") else v.split(":")[0] for k, v in shown.items()} == want_rejects
    assert list(shown) == sorted(shown)
    items = {r["item_idx"]: r["item_id"] for r in local_lake.read(VOCAB, DT, "items.parquet").to_pylist()}
    want_sequences: dict[str, list[str]] = {}
    for _, _, _, user, item in events:
        want_sequences.setdefault(user, []).append(item)
    sequences = {r["user_id"]: [items[i] for i in r["items"]] for r in read_sequences(local_lake, DT)[0].to_pylist()}
    assert sequences == want_sequences
    # Both vocabs number new ids in order of first appearance in event order.
    assert read_user_vocab(local_lake, DT).column("user_id").to_pylist() == list(dict.fromkeys(e[3] for e in events))
    assert [items[k] for k in sorted(items)] == list(dict.fromkeys(e[4] for e in events))
