"""Validate a day's interaction logs and fold them into the append-only vocab and cumulative sequences.

Pure functions on streams and tables; ``steps.ingest`` does the reading and publishing. Nothing is dropped
silently: every row that is not kept comes back as a reject with its file, row number, reason and raw values.

Memory (issue 29, item 12): a day is read as streams, parsed and checked ``CHUNK_ROWS`` rows at a time, and only
its accepted rows are held until the end, compactly (ids as int32 codes into the day's distinct ids, ts as int64
microseconds, the row number, the raw ts zstd-packed for a duplicate's reject); the day-wide rules (duplicates,
event order) then run on those arrays. Reading whole files into Python rows made a 200 MB CSV day peak at 5.3 GB.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt_mod
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dealrec_tasks.data.arrow import list_lengths
from dealrec_tasks.data.schema import (
    INTERACTION_COLUMNS,
    ITEM_VOCAB_SCHEMA,
    REJECTS_SCHEMA,
    SEQUENCES_SCHEMA,
    TS,
    USER_VOCAB_SCHEMA,
)

LOG_SUFFIXES = (".parquet", ".csv", ".jsonl", ".json")

# Rows parsed and checked at a time (a Parquet record batch; lines of a CSV or JSON-lines file, rejected ones
# included): what bounds the Python objects alive at once. Tests set it tiny to cross chunk boundaries.
CHUNK_ROWS = 200_000
READ_BLOCK = 1 << 20  # bytes read from a log stream at a time (tests set it tiny too)
_BLOCK = 1 << 20  # rows per step of the blockwise numpy passes over a whole day (bounds their temporaries)

# Reasons (the prefix before ':' is the category reported in counts).
MALFORMED = "malformed"
NULL_ID = "null_id"
WRONG_DAY = "wrong_day"
UNKNOWN_COLUMNS = "unknown_columns"
DUPLICATE = "duplicate"
INVALID_UTF8 = "invalid_utf8"
BAD_ID = "bad_id"
REASONS = (MALFORMED, NULL_ID, BAD_ID, WRONG_DAY, UNKNOWN_COLUMNS, DUPLICATE, INVALID_UTF8)

# The id contract (README "Ingest rules"): an id is UTF-8 text of 1 to ID_MAX_CHARS characters, with no control
# character and no leading or trailing whitespace, and not a null written as text. Integers of a typed file
# (a Parquet integer column, a JSON integer) are taken as their decimal text. Nothing else is an id: a float, a
# boolean, a list or a struct would be turned into text that merges with other ids (True became user "1").
ID_MAX_CHARS = 256
_ID_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
NULL_TEXTS = frozenset({"null", "none", "nan", "nat", "undefined"})
# An id that passes every rule at a glance: printable ASCII other than space (nothing to strip, no control
# character), 1 to ID_MAX_CHARS long. Such ids (and in-day timestamps) skip the rules' row-by-row checks.
_PLAIN_ID = f"^[!-~]{{1,{ID_MAX_CHARS}}}$"


@dataclass(frozen=True, eq=False)  # hashed by identity: the value may be a list
class NotAnId:
    """A value of a type that is not an id (kept as it was read, for the reject's raw value)."""

    kind: str  # what it is, for the reason: "a JSON boolean", "a Parquet double column"
    value: object


def is_log_file(name: str) -> bool:
    return not name.startswith(("_", ".")) and name.lower().endswith(LOG_SUFFIXES)


def escaped_text(value: bytes | str) -> str:
    """Bytes or a string that is not valid UTF-8, as text that keeps every byte (``\\xff``, ``\\udcff``), so a
    reject can be stored and still shows what the producer wrote."""
    data = value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")
    return data.decode("utf-8", "backslashreplace")


def is_utf8_text(value: object) -> bool:
    """False for bytes and for strings holding lone surrogates (a JSON ``"\\udcff"`` escape): neither is an id."""
    if isinstance(value, bytes):
        return False
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
    return True


def duplicated_names(names: list[str]) -> list[str]:
    seen: set[str] = set()
    return sorted({n for n in names if n in seen or seen.add(n)})


def _json_safe(value: object) -> object:
    if isinstance(value, NotAnId):
        return _json_safe(value.value)
    if isinstance(value, np.ndarray):  # a Parquet list value
        return [_json_safe(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, bytes) or (isinstance(value, str) and not is_utf8_text(value)):
        return escaped_text(value)
    return None if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NaT else value


def _reject(source: str, row: int, reason: str, raw: object) -> dict:
    text = escaped_text(raw) if isinstance(raw, str) else json.dumps(_json_safe(raw), default=str, sort_keys=True)
    return {"source_file": source, "row": int(row), "reason": reason, "raw": text}


def _parse_ts(values: pd.Series) -> pd.Series:
    """ISO-8601 strings or timestamps to UTC; naive values are taken as UTC; anything else becomes NaT."""
    if pd.api.types.is_datetime64_any_dtype(values):
        ts = values if getattr(values.dt, "tz", None) is not None else values.dt.tz_localize("UTC")
        return ts.dt.tz_convert("UTC").astype("datetime64[us, UTC]")
    # Anything but text (epoch integers of unknown unit, dates without a time, nulls) is not a timestamp here:
    # those rows become rejects with their raw value, they do not crash the day.
    as_str = values.map(lambda v: v if isinstance(v, str) else None).astype(object)
    return _iso_utc(as_str)


_FINER_THAN_US = re.compile(r"\.\d{7}")


def _iso_utc(texts: pd.Series) -> pd.Series:
    """ISO-8601 texts (None: missing) as datetime64[us, UTC], each as it parses alone.

    pandas gives a whole call the finest resolution any value needs: one text with nanoseconds made the call
    nanosecond, and then a text beyond 2262 (``9999-12-31T10:00:00Z``, a day the pipeline accepts) came back NaT,
    so whether a row was malformed depended on the other rows parsed with it (the file; with chunks, the chunk).
    The texts that failed in a nanosecond call and need no more than microseconds are parsed again on their own.
    """
    parsed = pd.to_datetime(texts, format="ISO8601", utc=True, errors="coerce")
    if not isinstance(getattr(parsed, "dtype", None), pd.DatetimeTZDtype):  # all missing: pandas gives no tz
        return pd.Series(pd.NaT, index=texts.index, dtype="datetime64[us, UTC]")
    nanosecond = parsed.dtype.unit == "ns"
    parsed = parsed.astype("datetime64[us, UTC]")
    if nanosecond:
        again = [
            k
            for k, (t, v) in enumerate(zip(parsed.isna().to_numpy(), texts.to_numpy()))
            if t and isinstance(v, str) and not _FINER_THAN_US.search(v)
        ]
        if again:
            retry = pd.to_datetime(texts.iloc[again], format="ISO8601", utc=True, errors="coerce")
            if isinstance(retry.dtype, pd.DatetimeTZDtype) and retry.dtype.unit != "ns":
                parsed.iloc[again] = retry.astype("datetime64[us, UTC]").to_numpy()
    return parsed


# Seconds since the epoch of 0001-01-01 and 9999-12-31T23:59:59: the years Python datetimes (and pandas' text
# formatting) can show.
_PY_SECONDS = (-62135596800, 253402300799)
_PER_SECOND = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}


def ts_text(ts: pd.Series) -> pd.Series:
    """Typed timestamps as exact text, None for missing: ISO within Python's years, else the stored count and unit
    as given. ``astype(object)`` went through Python datetimes, so 2**62 microseconds came back as a date in 1970,
    and pandas cannot format such a value at all."""
    counts = ts.array.asi8
    per_second = _PER_SECOND[ts.dt.unit]
    shown = ts.notna().to_numpy() & (counts >= _PY_SECONDS[0] * per_second) & (counts <= _PY_SECONDS[1] * per_second)
    out = pd.Series(None, index=ts.index, dtype=object)
    out[shown] = ts[shown].astype(str).astype(object)
    beyond = ts.notna().to_numpy() & ~shown
    out[beyond] = [f"{n} {ts.dt.unit} since 1970-01-01" for n in counts[beyond]]
    return out


def _ts_raw(ts: pd.Series) -> np.ndarray:
    return (ts_text(ts) if pd.api.types.is_datetime64_any_dtype(ts) else ts.astype(object)).to_numpy()


def _raw_text(v: object) -> str:
    """A raw value for a reject's reason; a missing one reads "null" (astype(str) gave a missing string, so the
    reason itself went missing and the row was accepted with no timestamp)."""
    if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NaT:
        return "null"
    return str(v)


def _parquet_id_type(t: pa.DataType) -> bool:
    """Text, binary (UTF-8 checked per value) or integer columns hold ids; dictionary-encoded ones too."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    return (
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_integer(t)
    )


_JSON_KINDS = {bool: "a JSON boolean", float: "a JSON number with a fraction or exponent", list: "a JSON array"}


def _json_id(v: object) -> object:
    """A JSON id as the contract takes it: text as is, an integer as its decimal text, anything else NotAnId."""
    if isinstance(v, (bool, float, list, dict)):  # bool before int: True is an int
        return NotAnId(_JSON_KINDS.get(type(v), "a JSON object"), v)
    return _id_str(v)


def _id_str(v: object) -> str | None:
    """Ids are strings in the contract; integral ids from typed files are accepted as their decimal text, binary
    ones when they are UTF-8 (other bytes stay bytes, for the row checks to reject with their escaped value)."""
    if v is None:
        return None
    if isinstance(v, bytes):
        try:
            return v.decode("utf-8")
        except UnicodeDecodeError:
            return v
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return v if isinstance(v, str) else str(v)


# ---------------------------------------------------------------------------------------------------------
# Parsing: each format as a stream, in chunks of rows
# ---------------------------------------------------------------------------------------------------------
class _Refused(Exception):
    """The whole file is refused: one reject (row 0) with this reason after "malformed: ", its bytes kept whole."""


@dataclass
class _Chunk:
    """Up to ``CHUNK_ROWS`` rows of one file: those with the contract's columns (values still unchecked) and the
    rows refused while parsing."""

    rows: pd.DataFrame  # source_file, row, user_id, item_id, ts_raw (as read), ts (datetime64[us, UTC], NaT: none)
    rejects: list[dict]
    ts_arrow: pa.Array | None = None  # Parquet: the batch's ts column as read (the raw value of a later duplicate)


def _objects(values: list) -> np.ndarray:
    """A list as a 1-d object array, lists and dicts in it kept as values (``np.array`` would nest them)."""
    return np.fromiter(values, dtype=object, count=len(values))


def _frame(source: str, numbers: list[int], users: list, items: list, ts_values: list) -> pd.DataFrame:
    ts_raw = _objects(ts_values)
    out = pd.DataFrame(
        {
            "source_file": source,
            "row": np.asarray(numbers, dtype=np.int64),
            "user_id": _objects(users),
            "item_id": _objects(items),
            "ts_raw": ts_raw,
        }
    )
    # .array keeps the UTC dtype (to_numpy() gave objects, and an all-missing column then came back naive)
    out["ts"] = (
        _parse_ts(pd.Series(ts_raw, dtype=object)).array if len(out) else pd.Series([], dtype="datetime64[us, UTC]")
    )
    return out


def _duplicated_columns(source: str, columns: list[str]) -> str | None:
    """A file with two columns of one name is refused: which of them is meant cannot be known (a CSV reader
    silently kept the last one)."""
    dups = duplicated_names(columns)
    return f"duplicated column(s) {', '.join(dups)} in the header of {source}" if dups else None


def _check_columns(source: str, columns: list[str], allow_extra: bool) -> str | None:
    """A reason when the file's columns break the contract, else None."""
    missing = [c for c in INTERACTION_COLUMNS if c not in columns]
    if missing:
        return f"{MALFORMED}: missing column(s) {', '.join(missing)} in {source}"
    extra = [c for c in columns if c not in INTERACTION_COLUMNS]
    if extra and not allow_extra:
        return f"{UNKNOWN_COLUMNS}: {', '.join(extra)}"
    return None


def log_chunks(
    source: str, stream: BinaryIO, allow_extra_columns: bool = False, chunk_rows: int | None = None
) -> Iterator[_Chunk]:
    """The rows of one log file (Parquet: ``stream`` seekable; CSV with a header; JSON lines) in chunks of
    ``chunk_rows``; raises ``_Refused`` when the file is refused whole (an unreadable file, a duplicated column, a
    CSV that is not UTF-8), possibly after some chunks: the caller drops those (``DayValidator.add_file``)."""
    lower, rows = source.lower(), chunk_rows or CHUNK_ROWS
    if lower.endswith(".parquet"):
        return _parquet_chunks(source, stream, allow_extra_columns, rows)
    if lower.endswith(".csv"):
        return _csv_chunks(source, stream, allow_extra_columns, rows)
    return _jsonl_chunks(source, stream, allow_extra_columns, rows)


def _parquet_chunks(source: str, stream: BinaryIO, allow_extra: bool, chunk_rows: int) -> Iterator[_Chunk]:
    try:
        parquet = pq.ParquetFile(stream)
        names = parquet.schema_arrow.names
    except (pa.ArrowInvalid, OSError) as exc:
        raise _Refused(f"unreadable Parquet ({exc})") from None
    refused = _duplicated_columns(source, names)
    if refused:
        raise _Refused(refused)
    # On the calling thread (see ``storage.parquet_from_bytes``); record batches, never the whole table.
    batches = parquet.iter_batches(batch_size=chunk_rows, use_threads=False)
    first = 1
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowInvalid, OSError) as exc:  # a damaged row group: the whole file, as a failed read was
            raise _Refused(f"unreadable Parquet ({exc})") from None
        yield _parquet_chunk(source, batch, first, allow_extra)
        first += batch.num_rows


def _parquet_chunk(source: str, batch: pa.RecordBatch, first: int, allow_extra: bool) -> _Chunk:
    table = pa.Table.from_batches([batch])
    df = table.to_pandas(types_mapper=None)
    rows = np.arange(first, first + len(df), dtype=np.int64)
    bad_columns = _check_columns(source, list(df.columns), allow_extra)
    if bad_columns:
        recs = df.astype(object).where(df.notna(), None).to_dict("records")
        return _Chunk(
            _frame(source, [], [], [], []), [_reject(source, r, bad_columns, rec) for r, rec in zip(rows, recs)]
        )

    def ids(name: str) -> np.ndarray:
        col = df[name]
        values = col.astype(object).where(col.notna(), None)
        arrow_type = table.schema.field(name).type
        if not _parquet_id_type(arrow_type):
            kind = f"a Parquet {arrow_type} column"
            return values.map(lambda v: None if v is None else NotAnId(kind, v)).to_numpy()
        return (values if pd.api.types.is_string_dtype(col) else values.map(_id_str)).to_numpy()

    out = pd.DataFrame(
        {
            "source_file": source,
            "row": rows,
            "user_id": ids("user_id"),
            "item_id": ids("item_id"),
            "ts_raw": df["ts"].array,  # typed: turned into text (``_ts_raw``) only for the rows rejected
        }
    )
    out["ts"] = _parse_ts(df["ts"]).array  # keeps the UTC dtype, whatever the file's ts type was
    return _Chunk(out, [], batch.column("ts"))


def _decode_error(exc: UnicodeDecodeError, base: int) -> str:
    """``str(exc)`` worded as decoding the whole text at once words it: positions from the start of the text
    (``base``: where the bytes the decoder held begin), so a refusal names the same byte as before streaming."""
    start, end = base + exc.start, base + exc.end
    if end - start == 1:
        byte = exc.object[exc.start]
        return f"'{exc.encoding}' codec can't decode byte 0x{byte:02x} in position {start}: {exc.reason}"
    return f"'{exc.encoding}' codec can't decode bytes in position {start}-{end - 1}: {exc.reason}"


def _utf8_text(stream: BinaryIO, block: int | None = None) -> Iterator[str]:
    """A stream decoded as ``utf-8-sig`` (a leading BOM dropped), block by block. A byte sequence that is not UTF-8
    raises ``_Refused`` worded as ``data.decode("utf-8-sig")`` of the whole file words it (positions after the
    BOM), wherever in the stream it is."""
    block = block or READ_BLOCK
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    bom = codecs.BOM_UTF8
    data = b""
    while len(data) < len(bom):
        more = stream.read(block)
        if not more:
            break
        data += more
    if data.startswith(bom):
        data = data[len(bom) :] or stream.read(block)  # empty only at the end of the stream
    offset = 0  # bytes after the BOM handed to the decoder before ``data``
    while True:
        final = not data
        held = len(decoder.getstate()[0])  # the end of the previous block, an incomplete character
        try:
            text = decoder.decode(data, final)
        except UnicodeDecodeError as exc:
            raise _Refused(f"not UTF-8 ({_decode_error(exc, offset - held)})") from None
        if text:
            yield text
        if final:
            return
        offset += len(data)
        data = stream.read(block)


def _text_lines(texts: Iterator[str]) -> Iterator[str]:
    """Lines as ``io.StringIO(text, newline="")`` gives them for the whole text (ends kept; ``\\n``, ``\\r\\n`` and
    ``\\r`` end a line), from the text in blocks: a block's last line waits for the next block (it may go on there,
    or be a ``\\r`` whose ``\\n`` follows)."""
    carry = ""
    for text in texts:
        lines = io.StringIO(carry + text, newline="").readlines()
        carry = lines.pop() if lines and not lines[-1].endswith("\n") else ""
        yield from lines
    if carry:
        yield carry


def _byte_lines(stream: BinaryIO, block: int | None = None) -> Iterator[bytes]:
    """The lines of a binary stream without their ends, as ``data.splitlines()`` gives them for the whole data."""
    block, carry = block or READ_BLOCK, b""
    while data := stream.read(block):
        lines = (carry + data).splitlines(keepends=True)
        carry = lines.pop() if lines and not lines[-1].endswith(b"\n") else b""
        for line in lines:
            yield line[:-2] if line.endswith(b"\r\n") else line[:-1]
    if carry:
        yield carry[:-1] if carry.endswith(b"\r") else carry


class _RowLines:
    """The lines of a CSV text as the csv module reads them (``newline=""``), keeping those of the row being read:
    its raw value when the reader refuses it (a field over ``csv.field_size_limit()``, 128 KiB)."""

    def __init__(self, lines: Iterator[str]) -> None:
        self._lines = lines
        self.row: list[str] = []

    def __iter__(self) -> _RowLines:
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        self.row.append(line)
        return line

    def drain(self) -> None:
        """Read (decode) the rest: a byte further on that is not UTF-8 refuses the file as that, as it did when the
        whole text was decoded before the header was looked at."""
        for _ in self._lines:
            pass


def _csv_chunks(source: str, stream: BinaryIO, allow_extra: bool, chunk_rows: int) -> Iterator[_Chunk]:
    lines = _RowLines(_text_lines(_utf8_text(stream)))
    reader = csv.reader(lines)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        lines.drain()
        raise _Refused(f"unreadable CSV header in {source} ({exc})") from None
    if header is None:
        return
    header = [h.strip() for h in header]
    refused = _duplicated_columns(source, header)
    if refused:
        lines.drain()
        raise _Refused(refused)
    bad_columns = _check_columns(source, header, allow_extra)
    at = [header.index(c) for c in INTERACTION_COLUMNS] if bad_columns is None else []
    numbers, users, items, ts, rejects, read = [], [], [], [], [], 0
    while True:
        if read >= chunk_rows:
            yield _Chunk(_frame(source, numbers, users, items, ts), rejects)
            numbers, users, items, ts, rejects, read = [], [], [], [], [], 0
        lines.row = []
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:  # the row is refused with its lines; the reader goes on with the next line
            raw = "".join(lines.row).rstrip("\r\n")
            rejects.append(_reject(source, reader.line_num, f"{MALFORMED}: unreadable CSV row ({exc})", raw))
            read += 1
            continue
        line = reader.line_num
        if not fields:
            continue  # blank line
        read += 1
        if len(fields) != len(header):
            rejects.append(
                _reject(source, line, f"{MALFORMED}: {len(fields)} fields, header has {len(header)}", fields)
            )
            continue
        if bad_columns:
            rejects.append(_reject(source, line, bad_columns, dict(zip(header, fields))))
            continue
        numbers.append(line)
        users.append(fields[at[0]] or None)  # "" is a missing value
        items.append(fields[at[1]] or None)
        ts.append(fields[at[2]] or None)
    if numbers or rejects:
        yield _Chunk(_frame(source, numbers, users, items, ts), rejects)


class _DuplicatedKeys(ValueError):
    pass


def _object_or_duplicates(pairs: list[tuple[str, object]]) -> dict:
    """``json.loads`` keeps the last of repeated keys silently; a row saying two things is refused instead."""
    dups = duplicated_names([k for k, _ in pairs])
    if dups:
        raise _DuplicatedKeys(", ".join(dups))
    return dict(pairs)


def _jsonl_chunks(source: str, stream: BinaryIO, allow_extra: bool, chunk_rows: int) -> Iterator[_Chunk]:
    numbers, users, items, ts, rejects, read = [], [], [], [], [], 0

    def chunk() -> _Chunk:
        return _Chunk(_frame(source, numbers, [_json_id(v) for v in users], [_json_id(v) for v in items], ts), rejects)

    # Line by line: a line that is not UTF-8 is a reject with its bytes escaped (decoding the whole file with
    # errors="replace" turned them into U+FFFD, and the mangled ids were accepted).
    for line_no, raw_line in enumerate(_byte_lines(stream), start=1):
        if read >= chunk_rows:
            yield chunk()
            numbers, users, items, ts, rejects, read = [], [], [], [], [], 0
        read += 1
        try:
            line = raw_line.decode("utf-8")
        except UnicodeDecodeError as exc:
            why = f"{INVALID_UTF8}: line is not UTF-8 ({exc.reason} at byte {exc.start})"
            rejects.append(_reject(source, line_no, why, escaped_text(raw_line)))
            continue
        if not line.strip():
            continue
        try:
            rec = json.loads(line, object_pairs_hook=_object_or_duplicates)
        except json.JSONDecodeError as exc:
            rejects.append(_reject(source, line_no, f"{MALFORMED}: invalid JSON ({exc.msg})", line))
            continue
        except _DuplicatedKeys as exc:
            rejects.append(_reject(source, line_no, f"{MALFORMED}: duplicated key(s) {exc}", line))
            continue
        except ValueError as exc:  # an integer of more than 4,300 digits (Python's int limit)
            rejects.append(_reject(source, line_no, f"{MALFORMED}: invalid JSON ({exc})", line))
            continue
        except RecursionError:  # arrays or objects nested deeper than the parser's recursion limit
            rejects.append(_reject(source, line_no, f"{MALFORMED}: invalid JSON (nested too deeply)", line))
            continue
        if not isinstance(rec, dict):
            rejects.append(_reject(source, line_no, f"{MALFORMED}: a line must be a JSON object", line))
            continue
        bad_columns = _check_columns(source, list(rec), allow_extra)
        if bad_columns:
            rejects.append(_reject(source, line_no, bad_columns, rec))
            continue
        not_text = [c for c in INTERACTION_COLUMNS if not is_utf8_text(rec[c])]
        if not_text:  # a "\udcff" escape: no UTF-8 text can hold it
            rejects.append(_reject(source, line_no, f"{INVALID_UTF8}: {', '.join(not_text)} is not UTF-8", line))
            continue
        numbers.append(line_no)
        users.append(rec["user_id"])
        items.append(rec["item_id"])
        ts.append(rec["ts"])
    if numbers or rejects:
        yield chunk()


# ---------------------------------------------------------------------------------------------------------
# Row checks (per chunk) and the day (duplicates and event order, on compact arrays)
# ---------------------------------------------------------------------------------------------------------
def _reasons(rows: pd.DataFrame, dt: str) -> pd.Series:
    """The first reason that applies to each row (None when none does), in the README's order, for the rules one
    row can break alone: ids that are not UTF-8, null or not ids; timestamps that are not ISO-8601 or outside
    ``dt``. (Duplicates need the whole day: ``DayValidator.finish``.)"""
    day_start = pd.Timestamp(dt_mod.date.fromisoformat(dt), tz="UTC")
    day_end = day_start + pd.Timedelta(days=1)
    reason = pd.Series(None, index=rows.index, dtype=object)

    def mark(mask: pd.Series, text) -> None:
        """Give the first reason to rows that have none yet; ``text`` maps those rows to messages."""
        todo = mask & reason.isna()
        if todo.any():
            reason[todo] = text(rows[todo]) if callable(text) else text

    for col in ("user_id", "item_id"):
        not_text = ~rows[col].map(is_utf8_text).astype(bool)
        mark(not_text, lambda r, c=col: f"{INVALID_UTF8}: {c} " + r[c].map(escaped_text) + " is not UTF-8")
        text = rows[col].map(lambda v: v.strip() if isinstance(v, str) else v)
        empty_id = rows[col].isna() | (text == "")
        mark(empty_id, f"{NULL_ID}: {col} is empty")
        # A null that a producer wrote as text ("null", "None", "nan") is not an id: every such row would be one
        # user (or item) in the vocab.
        null_text = text.map(lambda v: isinstance(v, str) and v.lower() in NULL_TEXTS)
        mark(null_text, lambda r, c=col: f"{NULL_ID}: {c} is " + r[c].map(repr) + ", a null written as text")
        for mask, why in _id_contract_breaches(rows[col], col):
            mark(mask, why)
    not_ts = " is not an ISO-8601 timestamp"
    mark(rows["ts"].isna(), lambda r: MALFORMED + ": ts " + r["ts_raw"].map(_raw_text) + not_ts)
    outside = rows["ts"].notna() & ((rows["ts"] < day_start) | (rows["ts"] >= day_end))
    mark(outside, lambda r: WRONG_DAY + ": ts " + ts_text(r["ts"]) + f" is outside {dt}")
    return reason


def _shown_id(v: str) -> str:
    return repr(v) if len(v) <= 80 else repr(v[:80]) + "..."


def _id_contract_breaches(ids: pd.Series, col: str) -> list[tuple[pd.Series, object]]:
    """(rows, reason) for each way the column's values break the id contract (``ID_MAX_CHARS`` and above)."""
    not_an_id = ids.map(lambda v: isinstance(v, NotAnId)).astype(bool)
    text = ids.map(lambda v: v if isinstance(v, str) else "")
    control = text.map(lambda v: _ID_CONTROL.search(v) is not None).astype(bool)
    padded = text != text.str.strip()
    long = text.str.len() > ID_MAX_CHARS

    def control_reason(v: str) -> str:
        code = ord(_ID_CONTROL.search(v).group())
        return f"{BAD_ID}: {col} {_shown_id(v)} holds a control character (U+{code:04X})"

    def long_reason(v: str) -> str:
        return f"{BAD_ID}: {col} is {len(v):,} characters long (at most {ID_MAX_CHARS})"

    return [
        (not_an_id, lambda r: f"{BAD_ID}: {col} is " + r[col].map(lambda v: v.kind) + " (ids are text or integers)"),
        (control, lambda r: r[col].map(control_reason)),
        (padded, lambda r: f"{BAD_ID}: {col} " + r[col].map(_shown_id) + " has leading or trailing whitespace"),
        (long, lambda r: r[col].map(long_reason)),
    ]


_NULL_WORDS = pa.array(sorted(NULL_TEXTS), pa.string())


def _id_array(values: pd.Series) -> pa.Array:
    """An id column's text values as Arrow strings; anything else (missing, bytes, ``NotAnId``, a string with a
    lone surrogate) null."""
    objects = values.to_numpy(dtype=object)
    try:
        return pa.array([v if isinstance(v, str) else None for v in objects], pa.string())
    except (pa.ArrowException, UnicodeError):  # a lone surrogate
        return pa.array([v if isinstance(v, str) and is_utf8_text(v) else None for v in objects], pa.string())


def _plain(ids: pa.Array) -> np.ndarray:
    """[rows] bool: the id passes every id rule at a glance (``_PLAIN_ID``, not a null word); the other rows go
    through ``_reasons``, which gives exactly the reasons row by row."""
    shaped = pc.match_substring_regex(ids, _PLAIN_ID)
    null_word = pc.is_in(pc.ascii_lower(ids), value_set=_NULL_WORDS)
    return pc.and_(shaped, pc.invert(null_word)).fill_null(False).to_numpy(zero_copy_only=False)


def _packed(columns: dict[str, pa.Array]) -> pa.Buffer:
    """Columns as zstd-compressed Arrow IPC: a chunk's row numbers and raw timestamps, read back only for the rows
    a duplicate involves (and for ``keep_provenance``)."""
    batch = pa.record_batch(columns)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as writer:
        writer.write_batch(batch)
    return sink.getvalue()


def _unpacked(data: pa.Buffer) -> pa.Table:
    return pa.ipc.open_stream(data).read_all()


def release_memory() -> None:
    """Give back to the system the memory Arrow's allocator keeps after frees: mimalloc holds freed pages, so the
    chunks of a large day, freed once copied into the day's arrays, stayed in the process's RSS (800 MB of freed
    arrays in a probe) beside what replaced them."""
    pa.default_memory_pool().release_unused()


class _DayIds:
    """One id column of a day's accepted rows: int32 codes into one dictionary of the day's distinct ids, built
    chunk by chunk, so memory follows the distinct ids and not the rows.

    Each chunk is dictionary-encoded alone; the chunks' dictionaries are merged into the day's once they hold as
    many values as it (Arrow's dictionary unifier keeps the day's dictionary as the prefix of the merged one, so
    codes given before stay valid): each id is hashed a logarithmic number of times.
    """

    def __init__(self) -> None:
        self.dictionary = pa.array([], pa.string())
        self._codes: list[np.ndarray] = []  # chunks coded against ``dictionary``
        self._pending: list[pa.DictionaryArray] = []  # chunks coded against their own dictionary
        self._pending_values = 0

    def add(self, values: pa.Array) -> None:
        encoded = pc.dictionary_encode(values)
        self._pending.append(encoded)
        self._pending_values += len(encoded.dictionary)
        if self._pending_values >= max(len(self.dictionary), _BLOCK):
            self._merge()

    def _merge(self) -> None:
        if not self._pending:
            return
        head = pa.DictionaryArray.from_arrays(pa.array([], pa.int32()), self.dictionary)
        merged = pa.chunked_array([head, *self._pending]).unify_dictionaries()
        self.dictionary = merged.chunk(0).dictionary
        self._codes += [c.indices.to_numpy(zero_copy_only=False) for c in merged.chunks[1:]]
        self._pending, self._pending_values = [], 0

    def truncate(self, chunks: int) -> None:
        """Keep the first ``chunks`` chunks (a file refused whole drops its own; its ids may stay in the
        dictionary, unused)."""
        if chunks >= len(self._codes):
            self._pending = self._pending[: chunks - len(self._codes)]
            self._pending_values = sum(len(p.dictionary) for p in self._pending)
        else:
            del self._codes[chunks:]
            self._pending, self._pending_values = [], 0

    def finish(self) -> tuple[pa.Array, np.ndarray]:
        """The dictionary and [rows] int32 codes of every chunk, in order (each chunk released once copied)."""
        self._merge()
        codes, self._codes = _concatenated(self._codes, np.int32), []
        return self.dictionary, codes


def _concatenated(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    """``np.concatenate(parts)``, emptying ``parts`` as it goes: the day's column and its chunks are not both held."""
    out = np.empty(sum(len(p) for p in parts), dtype=dtype)
    at = 0
    parts.reverse()
    while parts:
        part = parts.pop()
        out[at : at + len(part)] = part
        at += len(part)
    return out


@dataclass
class _Accepted:
    """A chunk's rows that passed the row checks, compactly (their ids are in the ``_DayIds``)."""

    file: int  # index into ``DayValidator.files``
    size: int
    ts: np.ndarray | None  # [rows] int64 UTC microseconds (None once ``finish`` holds the day's)
    packed: pa.Buffer  # ``_packed``: "row" (the rows' numbers in their file) and "ts" (as read)


_REJECTS_BY_FILE = REJECTS_SCHEMA.append(pa.field("file", pa.int32()))


def _rejects_table(file: int, rejects: list[dict]) -> pa.Table:
    return pa.Table.from_pylist([r | {"file": file} for r in rejects], schema=_REJECTS_BY_FILE)


def _sorted_rejects(parts: list[pa.Table]) -> pa.Table:
    """Every reject of the day by file (name order) and row, as one table (REJECTS_SCHEMA)."""
    if not parts:
        return REJECTS_SCHEMA.empty_table()
    table = pa.concat_tables(parts)
    order = np.lexsort((table.column("row").to_numpy(), table.column("file").to_numpy()))  # stable
    return table.drop_columns(["file"]).take(pa.array(order)).combine_chunks()


def _ts_parts(ts: np.ndarray) -> list[tuple[int, int]]:
    """[lo, hi) ranges of ts values that split the rows into parts of about ``_BLOCK`` rows (cut at quantiles of a
    sample; equal values are never split), so that the day-wide steps can work one part at a time."""
    parts = -(-len(ts) // _BLOCK)
    if parts <= 1:
        return [(np.iinfo(np.int64).min, np.iinfo(np.int64).max)]
    sample = np.sort(ts[:: max(1, len(ts) // (parts * 64))])
    cuts = np.unique(sample[np.linspace(0, len(sample) - 1, parts + 1).astype(np.int64)[1:-1]]).tolist()
    edges = [np.iinfo(np.int64).min, *cuts, np.iinfo(np.int64).max]
    return list(zip(edges[:-1], edges[1:]))


def _deduplicated_order(users: np.ndarray, items: np.ndarray, ts: np.ndarray, n_items: int):
    """The day-wide rules on the accepted rows (positions: reading order, file by file in name order, row by row):

    - duplicates: rows with the user, item and ts of an earlier row; returns their positions and the position of
      the first such row for each (the one kept);
    - the event order of the rows kept: by ts, equal ts in reading order (file name, row).

    Duplicates share a ts, so the rows are taken one ts range at a time (``_ts_parts``): a stable sort by (user,
    item, ts) of the part keeps equal rows in reading order, and each run's first row is the one kept. No
    temporary is as long as the day but the order itself (uint32 while the day has under 2**32 rows).
    """
    n = len(ts)
    order = np.empty(n, dtype=np.uint32 if n < 2**32 else np.int64)
    again, first, kept = [], [], 0
    for lo, hi in _ts_parts(ts):
        at = np.flatnonzero((ts >= lo) & (ts < hi))  # ascending: reading order
        t = ts[at]
        key = users[at].astype(np.int64) * max(n_items, 1) + items[at]  # < 2**62: both are int32 codes
        by_key = np.lexsort((t, key))  # stable
        repeat = np.zeros(len(at), dtype=bool)  # in by_key order: equal to the row before
        repeat[1:] = (key[by_key[1:]] == key[by_key[:-1]]) & (t[by_key[1:]] == t[by_key[:-1]])
        runs = np.flatnonzero(~repeat)
        repeats = np.flatnonzero(repeat)
        again.append(at[by_key[repeats]])
        first.append(at[by_key[runs[np.searchsorted(runs, repeats, side="right") - 1]]])
        keep = np.ones(len(at), dtype=bool)
        keep[by_key[repeats]] = False
        at, t = at[keep], t[keep]
        order[kept : kept + len(at)] = at[np.argsort(t, kind="stable")]
        kept += len(at)
    empty = np.empty(0, dtype=np.int64)
    return (np.concatenate(again) if again else empty), (np.concatenate(first) if first else empty), order[:kept]


def _by_first_appearance(dictionary: pa.Array, codes: np.ndarray) -> pa.Array:
    """The ids that ``codes`` use, in order of first appearance in ``codes``; ``codes`` is renumbered into them in
    place (0 = the first to appear): the order in which the vocab numbers new ids."""
    n = len(codes)
    first = np.full(len(dictionary), n, dtype=np.int64)
    for lo in range(0, n, _BLOCK):
        seen, at = np.unique(codes[lo : lo + _BLOCK], return_index=True)
        new = first[seen] == n
        first[seen[new]] = lo + at[new]
    order = np.argsort(first, kind="stable")[: int((first < n).sum())]
    renumber = np.zeros(len(dictionary), dtype=np.int32)
    renumber[order] = np.arange(len(order), dtype=np.int32)
    for lo in range(0, n, _BLOCK):
        codes[lo : lo + _BLOCK] = renumber[codes[lo : lo + _BLOCK]]
    return dictionary.take(pa.array(order))


@dataclass
class ValidatedDay:
    """A day's accepted events in event order (ts, then file name, then row), compactly, and every rejected row
    with its reason."""

    users: pa.Array  # the day's distinct user ids, in order of first appearance in event order (string)
    user_codes: np.ndarray  # [events] int32: each event's user, an index into ``users``
    items: pa.Array  # the day's distinct item ids, likewise
    item_codes: np.ndarray  # [events] int32
    ts_us: np.ndarray  # [events] int64 UTC microseconds, ascending
    rejects: pa.Table  # REJECTS_SCHEMA, by file and row
    unreadable_files: list[str]
    files: list[str]  # the files read, in name order
    event_files: np.ndarray | None = None  # [events] index into ``files`` (``keep_provenance``)
    event_rows: np.ndarray | None = None  # [events] row in that file

    @property
    def accepted(self) -> int:
        return len(self.ts_us)

    def reject_counts(self) -> dict[str, int]:
        reasons = self.rejects.column("reason").combine_chunks()
        cats = pc.list_element(pc.split_pattern(reasons, ":", max_splits=1), 0)
        counts = {d["values"]: d["counts"] for d in pc.value_counts(cats).to_pylist()}
        return {r: int(counts.get(r, 0)) for r in REASONS}

    @property
    def clean(self) -> pd.DataFrame:
        """The events as a table of Python values: user_id, item_id, ts, source_file, row (small days: tests,
        references; ingest uses the arrays)."""
        if self.event_files is None:
            raise ValueError("the day was validated without keep_provenance")
        return pd.DataFrame(
            {
                "user_id": self.users.take(pa.array(self.user_codes)).to_numpy(zero_copy_only=False),
                "item_id": self.items.take(pa.array(self.item_codes)).to_numpy(zero_copy_only=False),
                "ts": pd.Series(self.ts_us.astype("datetime64[us]")).dt.tz_localize("UTC"),
                "source_file": np.asarray(self.files, dtype=object)[self.event_files],
                "row": self.event_rows.astype(np.int64),
            }
        )


class DayValidator:
    """A day's log files, checked one after another in bounded memory: ``add_file`` each (in name order), then
    ``finish``.

    Rows are parsed and checked ``chunk_rows`` at a time; of the rows that pass, only compact arrays stay until
    ``finish`` decides duplicates and the event order. A file refused whole (a CSV byte that is not UTF-8 near its
    end, a damaged Parquet row group) takes back its own chunks: nothing of it is accepted, as before streaming.
    ``keep_provenance`` keeps each event's file and row (``ValidatedDay.clean``).
    """

    def __init__(self, dt: str, chunk_rows: int | None = None, keep_provenance: bool = False) -> None:
        self.dt = dt
        self.chunk_rows = chunk_rows
        self.keep_provenance = keep_provenance
        start = dt_mod.datetime.combine(dt_mod.date.fromisoformat(dt), dt_mod.time(), dt_mod.UTC)
        self._start_us = int(start.timestamp()) * 10**6
        self._end_us = self._start_us + 86_400 * 10**6
        self.files: list[str] = []
        self.unreadable: list[str] = []
        self._users, self._items = _DayIds(), _DayIds()
        self._accepted: list[_Accepted] = []
        self._rejects: list[pa.Table] = []

    def add_file(self, source: str, stream: BinaryIO, allow_extra_columns: bool = False) -> None:
        """Parse and check one file (``log_chunks``: Parquet needs a seekable ``stream``)."""
        if self.files and source <= self.files[-1]:
            raise ValueError(f"{source!r} after {self.files[-1]!r}: files are added in name order")
        file = len(self.files)
        self.files.append(source)
        marks = len(self._accepted), len(self._rejects)
        try:
            for chunk in log_chunks(source, stream, allow_extra_columns, self.chunk_rows):
                self._add_chunk(file, chunk)
        except _Refused as refused:
            del self._accepted[marks[0] :], self._rejects[marks[1] :]
            self._users.truncate(marks[0])
            self._items.truncate(marks[0])
            self._rejects.append(_rejects_table(file, [_reject(source, 0, f"{MALFORMED}: {refused}", "")]))
            self.unreadable.append(source)

    def _add_chunk(self, file: int, chunk: _Chunk) -> None:
        rows, rejects = chunk.rows, list(chunk.rejects)
        if len(rows):
            users, items = _id_array(rows["user_id"]), _id_array(rows["item_id"])
            ts = rows["ts"]
            ts_us = ts.array.asi8
            ok = _plain(users) & _plain(items) & ts.notna().to_numpy()
            ok &= (ts_us >= self._start_us) & (ts_us < self._end_us)
            if not ok.all():
                doubt = np.flatnonzero(~ok)
                sub = rows.iloc[doubt].copy()
                sub["ts_raw"] = _ts_raw(sub["ts_raw"])
                why = _reasons(sub, self.dt)
                bad = why.notna().to_numpy()
                ok[doubt[~bad]] = True
                raw = sub.loc[bad, ["user_id", "item_id", "ts_raw"]].rename(columns={"ts_raw": "ts"})
                for (src, row, reason), rec in zip(
                    sub.loc[bad, ["source_file", "row"]].assign(why=why[bad]).itertuples(index=False),
                    raw.to_dict("records"),
                ):
                    rejects.append(_reject(src, row, reason, rec))
            if ok.any():
                mask = pa.array(ok)
                self._users.add(users.filter(mask))
                self._items.add(items.filter(mask))
                if chunk.ts_arrow is not None:
                    raw_ts = chunk.ts_arrow.filter(mask)
                else:
                    raw_ts = pa.array(rows["ts_raw"].to_numpy(dtype=object)[ok].tolist(), pa.string())
                numbers = pa.array(rows["row"].to_numpy()[ok], pa.int64())
                kept = ts_us[ok]
                self._accepted.append(_Accepted(file, len(kept), kept, _packed({"row": numbers, "ts": raw_ts})))
        if rejects:
            self._rejects.append(_rejects_table(file, rejects))

    def finish(self) -> ValidatedDay:
        """Duplicates (same user, item and ts as an earlier row in file and row order: the first is kept, the
        others rejected naming it), then the events in event order (ts, file name, row)."""
        accepted, self._accepted = self._accepted, []
        users, user_codes = self._users.finish()
        items, item_codes = self._items.finish()
        starts = np.concatenate([[0], np.cumsum([a.size for a in accepted], dtype=np.int64)])
        ts_parts = [a.ts for a in accepted]
        for a in accepted:
            a.ts = None
        ts = _concatenated(ts_parts, np.int64)
        release_memory()
        again, first, order = _deduplicated_order(user_codes, item_codes, ts, len(items))
        if len(again):
            ids = (users, user_codes, items, item_codes)
            self._rejects += self._duplicate_rejects(accepted, starts, again, first, ids)
            del ids
        provenance = None
        if self.keep_provenance:
            rows = [_unpacked(a.packed).column("row").to_numpy() for a in accepted]
            files = np.repeat(np.array([a.file for a in accepted], dtype=np.int32), [a.size for a in accepted])
            provenance = files[order], (np.concatenate(rows) if rows else np.empty(0, dtype=np.int64))[order]
        del accepted  # the row numbers and raw ts: only duplicates needed them
        # One column at a time, each released once gathered: no two copies of more than one column at once.
        ts = ts[order]
        user_codes = user_codes[order]
        item_codes = item_codes[order]
        del order
        users, items = _by_first_appearance(users, user_codes), _by_first_appearance(items, item_codes)
        release_memory()
        day = ValidatedDay(users, user_codes, items, item_codes, ts, _sorted_rejects(self._rejects),
                           list(self.unreadable), list(self.files))  # fmt: skip
        if provenance is not None:
            day.event_files, day.event_rows = provenance
        return day

    def _duplicate_rejects(
        self, accepted: list[_Accepted], starts: np.ndarray, again: np.ndarray, first: np.ndarray,
        ids: tuple[pa.Array, np.ndarray, pa.Array, np.ndarray],
    ) -> list[pa.Table]:  # fmt: skip
        """The rejects of the duplicate rows, a table per chunk that holds some: their own raw ts, and the file and
        row of the row each repeats (the packed columns of just the chunks involved are read back)."""
        users, user_codes, items, item_codes = ids
        by_position = np.argsort(again)
        again, first = again[by_position], first[by_position]
        chunk_of, first_chunk = (np.searchsorted(starts, p, side="right") - 1 for p in (again, first))
        first_rows = np.empty(len(first), dtype=np.int64)
        by_first_chunk = np.argsort(first_chunk, kind="stable")
        for c in np.unique(first_chunk):  # one chunk unpacked at a time
            lo, hi = np.searchsorted(first_chunk[by_first_chunk], [c, c + 1])
            k = by_first_chunk[lo:hi]
            rows = _unpacked(accepted[c].packed).column("row").to_numpy()
            first_rows[k] = rows[first[k] - starts[c]]
        out = []
        for c in np.unique(chunk_of):
            lo, hi = np.searchsorted(chunk_of, [c, c + 1])
            here = again[lo:hi]
            local = _unpacked(accepted[c].packed).take(pa.array(here - starts[c]))
            raw_ts = _ts_raw(local.column("ts").to_pandas())
            user_ids = users.take(pa.array(user_codes[here])).to_pylist()
            item_ids = items.take(pa.array(item_codes[here])).to_pylist()
            source = self.files[accepted[c].file]
            rejects = []
            for k, row, u, i, t in zip(range(lo, hi), local.column("row").to_pylist(), user_ids, item_ids, raw_ts):
                why = f"{DUPLICATE}: of {self.files[accepted[first_chunk[k]].file]} row {first_rows[k]}"
                rejects.append(_reject(source, row, why, {"user_id": u, "item_id": i, "ts": t}))
            out.append(_rejects_table(accepted[c].file, rejects))
        return out


# ---------------------------------------------------------------------------------------------------------
# Whole files in memory (references and tests; ``steps.ingest`` streams)
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParsedLog:
    """One log file's bytes, for ``validate_day``."""

    source: str
    data: bytes
    allow_extra_columns: bool = False


def parse_log_file(source: str, data: bytes, allow_extra_columns: bool = False) -> ParsedLog:
    return ParsedLog(source, data, allow_extra_columns)


def validate_day(parsed: list[ParsedLog], dt: str, chunk_rows: int | None = None) -> ValidatedDay:
    """``DayValidator`` over files held in memory (in name order), with each event's file and row kept."""
    validator = DayValidator(dt, chunk_rows, keep_provenance=True)
    for log in parsed:
        validator.add_file(log.source, io.BytesIO(log.data), log.allow_extra_columns)
    return validator.finish()


# ---------------------------------------------------------------------------------------------------------
# Vocab and sequences
# ---------------------------------------------------------------------------------------------------------
def _string_array(ids: pa.Array | pd.Series) -> pa.Array:
    return ids.cast(pa.string()) if isinstance(ids, pa.Array) else pa.array(ids.to_numpy(dtype=object), pa.string())


def extend_vocab(
    vocab: pa.Table, ids_in_order: pa.Array | pd.Series, id_col: str, idx_col: str
) -> tuple[pa.Table, int]:
    """Append ids not yet known, numbered from max+1 in order of first appearance; old ids never change.

    Indices start at 1 (0 is padding for items; kept for users too so both maps read the same). Arrow's hash
    lookups, not a Python set of every known id: the user map grows with the lake, the day's ids do not.
    ``ids_in_order``: the day's ids in event order (``ValidatedDay.users``: each once, already in that order).
    """
    day_ids = pc.unique(_string_array(ids_in_order))  # in order of first appearance
    known = pc.is_in(day_ids, value_set=vocab.column(id_col).combine_chunks().cast(pa.string()))
    new_ids = day_ids.filter(pc.invert(known))
    start = (int(pc.max(vocab.column(idx_col)).as_py()) + 1) if vocab.num_rows else 1
    schema = USER_VOCAB_SCHEMA if idx_col == "user_idx" else ITEM_VOCAB_SCHEMA
    added = pa.table(
        {id_col: new_ids, idx_col: pa.array(np.arange(start, start + len(new_ids)), pa.int32())}, schema=schema
    )
    return pa.concat_tables([vocab.cast(schema), added]), len(new_ids)


def empty_vocab(idx_col: str) -> pa.Table:
    return (USER_VOCAB_SCHEMA if idx_col == "user_idx" else ITEM_VOCAB_SCHEMA).empty_table()


def lookup(vocab: pa.Table, ids: pa.Array | pd.Series, id_col: str, idx_col: str) -> np.ndarray:
    """The indices of ``ids`` (all in ``vocab``) by a hash lookup of the day's ids in the map (pass the day's
    distinct ids and index the result by the events' codes: one lookup per id, not per event)."""
    day_ids = _string_array(ids)
    where = pc.index_in(day_ids, value_set=vocab.column(id_col).combine_chunks())
    if where.null_count:
        missing = day_ids.filter(where.is_null())[0]
        raise KeyError(f"{id_col} {missing} is not in the vocab")
    return vocab.column(idx_col).combine_chunks().take(where).to_numpy().astype(np.int32)


def append_to_sequences(
    prev: pa.Table | None, users: pa.Table, user_idx: np.ndarray, item_idx: np.ndarray, ts_us: np.ndarray
) -> pa.Table:
    """Cumulative sequences after a day: yesterday's items, then today's in event order, one row per user.

    ``user_idx``, ``item_idx``, ``ts_us`` (UTC microseconds) are today's events in time order.

    Vectorised: flatten, stable-sort by user (today's rows come after yesterday's and are already in time
    order), and rebuild the list columns from offsets.
    """
    if prev is not None and prev.num_rows:
        lengths = list_lengths(prev.column("items"))
        old_users = np.repeat(prev.column("user_idx").to_numpy(), lengths)
        old_items = prev.column("items").combine_chunks().flatten().to_numpy()
        old_ts = prev.column("ts").combine_chunks().flatten().cast(pa.int64()).to_numpy()
    else:
        old_users = old_items = old_ts = np.array([], dtype=np.int64)
    all_users = np.concatenate([old_users.astype(np.int32), user_idx.astype(np.int32)])
    all_items = np.concatenate([old_items.astype(np.int32), item_idx.astype(np.int32)])
    all_ts = np.concatenate([old_ts.astype(np.int64), ts_us.astype(np.int64)])
    order = np.argsort(all_users, kind="stable")
    all_users, all_items, all_ts = all_users[order], all_items[order], all_ts[order]
    uniq, starts = np.unique(all_users, return_index=True)
    offsets = pa.array(np.append(starts, len(all_users)).astype(np.int32))
    user_ids = pd.Series(users.column("user_id").to_pylist(), index=users.column("user_idx").to_numpy())
    return pa.table(
        {
            "user_idx": pa.array(uniq, pa.int32()),
            "user_id": pa.array(user_ids.reindex(uniq).to_numpy(dtype=object), pa.string()),
            "items": pa.ListArray.from_arrays(offsets, pa.array(all_items, pa.int32())),
            "ts": pa.ListArray.from_arrays(offsets, pa.array(all_ts, pa.int64()).cast(TS)),
        },
        schema=SEQUENCES_SCHEMA,
    )
