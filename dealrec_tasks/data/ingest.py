"""Validate a day's interaction logs and fold them into the append-only vocab and cumulative sequences.

Pure functions on bytes and tables; ``steps.ingest`` does the reading and publishing. Nothing is dropped
silently: every row that is not kept comes back as a reject with its file, row number, reason and raw values.
"""

from __future__ import annotations

import csv
import datetime as dt_mod
import io
import json
import re
from dataclasses import dataclass, field

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


@dataclass
class ParsedLog:
    """Rows of one file that have the contract's columns (values still unvalidated), and the rows that do not."""

    rows: pd.DataFrame  # source_file, row, user_id, item_id, ts (datetime64[us, UTC], NaT when unparseable), ts_raw
    rejects: list[dict] = field(default_factory=list)
    unreadable: bool = False  # the whole file could not be parsed; keep its bytes


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
    parsed = pd.to_datetime(as_str, format="ISO8601", utc=True, errors="coerce")
    if not isinstance(getattr(parsed, "dtype", None), pd.DatetimeTZDtype):  # all missing: pandas gives no tz
        return pd.Series(pd.NaT, index=values.index, dtype="datetime64[us, UTC]")
    return parsed.astype("datetime64[us, UTC]")


def _frame(source: str, records: list[dict], row_numbers: list[int]) -> pd.DataFrame:
    df = pd.DataFrame.from_records(records, columns=list(INTERACTION_COLUMNS)) if records else None
    if df is None:
        df = pd.DataFrame({c: pd.Series([], dtype=object) for c in INTERACTION_COLUMNS})
    out = pd.DataFrame(
        {
            "source_file": source,
            "row": np.asarray(row_numbers, dtype=np.int64),
            "user_id": df["user_id"].astype(object).to_numpy(),
            "item_id": df["item_id"].astype(object).to_numpy(),
            "ts_raw": df["ts"].astype(object).to_numpy(),
        }
    )
    # .array keeps the UTC dtype (to_numpy() gave objects, and an all-missing column then came back naive)
    out["ts"] = _parse_ts(df["ts"]).array if len(df) else pd.Series([], dtype="datetime64[us, UTC]")
    return out


def _unreadable(source: str, reason: str) -> ParsedLog:
    """The whole file is refused (its bytes are kept beside the rejects)."""
    return ParsedLog(_frame(source, [], []), [_reject(source, 0, f"{MALFORMED}: {reason}", "")], True)


def _duplicated_columns(source: str, columns: list[str]) -> ParsedLog | None:
    """A file with two columns of one name is refused: which of them is meant cannot be known (a CSV reader
    silently kept the last one)."""
    dups = duplicated_names(columns)
    return _unreadable(source, f"duplicated column(s) {', '.join(dups)} in the header of {source}") if dups else None


def _check_columns(source: str, columns: list[str], allow_extra: bool) -> str | None:
    """A reason when the file's columns break the contract, else None."""
    missing = [c for c in INTERACTION_COLUMNS if c not in columns]
    if missing:
        return f"{MALFORMED}: missing column(s) {', '.join(missing)} in {source}"
    extra = [c for c in columns if c not in INTERACTION_COLUMNS]
    if extra and not allow_extra:
        return f"{UNKNOWN_COLUMNS}: {', '.join(extra)}"
    return None


def parse_log_file(source: str, data: bytes, allow_extra_columns: bool = False) -> ParsedLog:
    """Parse one log file (Parquet, CSV with a header, or JSON lines) into candidate rows and rejects."""
    lower = source.lower()
    if lower.endswith(".parquet"):
        return _parse_parquet(source, data, allow_extra_columns)
    if lower.endswith(".csv"):
        return _parse_csv(source, data, allow_extra_columns)
    return _parse_jsonl(source, data, allow_extra_columns)


def _parse_parquet(source: str, data: bytes, allow_extra: bool) -> ParsedLog:
    try:
        refused = _duplicated_columns(source, pq.read_schema(pa.BufferReader(data)).names)
        if refused:
            return refused
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowInvalid, OSError) as exc:
        return _unreadable(source, f"unreadable Parquet ({exc})")
    df = table.to_pandas(types_mapper=None)
    rows = list(range(1, len(df) + 1))
    bad_columns = _check_columns(source, list(df.columns), allow_extra)
    if bad_columns:
        recs = df.astype(object).where(df.notna(), None).to_dict("records")
        return ParsedLog(_frame(source, [], []), [_reject(source, r, bad_columns, rec) for r, rec in zip(rows, recs)])

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
            "row": np.asarray(rows, dtype=np.int64),
            "user_id": ids("user_id"),
            "item_id": ids("item_id"),
            "ts_raw": _ts_raw(df["ts"]),  # stringified only for rejected rows
        }
    )
    out["ts"] = _parse_ts(df["ts"]).array  # keeps the UTC dtype, whatever the file's ts type was
    return ParsedLog(out)


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


NULL_TEXTS = frozenset({"null", "none", "nan", "nat", "undefined"})


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
    ones when they are UTF-8 (other bytes stay bytes, for ``validate_day`` to reject with their escaped value)."""
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


class _RowLines:
    """The lines of a CSV text as the csv module reads them (``newline=""``), keeping those of the row being read:
    its raw value when the reader refuses it (a field over ``csv.field_size_limit()``, 128 KiB)."""

    def __init__(self, text: str) -> None:
        self._lines = io.StringIO(text, newline="")
        self.row: list[str] = []

    def __iter__(self) -> _RowLines:
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        self.row.append(line)
        return line


def _parse_csv(source: str, data: bytes, allow_extra: bool) -> ParsedLog:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return _unreadable(source, f"not UTF-8 ({exc})")
    lines = _RowLines(text)
    reader = csv.reader(lines)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        return _unreadable(source, f"unreadable CSV header in {source} ({exc})")
    if header is None:
        return ParsedLog(_frame(source, [], []))
    header = [h.strip() for h in header]
    refused = _duplicated_columns(source, header)
    if refused:
        return refused
    bad_columns = _check_columns(source, header, allow_extra)
    records, numbers, rejects = [], [], []
    while True:
        lines.row = []
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:  # the row is refused with its lines; the reader goes on with the next line
            raw = "".join(lines.row).rstrip("\r\n")
            rejects.append(_reject(source, reader.line_num, f"{MALFORMED}: unreadable CSV row ({exc})", raw))
            continue
        line = reader.line_num
        if not fields:
            continue  # blank line
        if len(fields) != len(header):
            rejects.append(
                _reject(source, line, f"{MALFORMED}: {len(fields)} fields, header has {len(header)}", fields)
            )
            continue
        rec = dict(zip(header, fields))
        if bad_columns:
            rejects.append(_reject(source, line, bad_columns, rec))
            continue
        records.append({c: (rec[c] if rec[c] != "" else None) for c in INTERACTION_COLUMNS})
        numbers.append(line)
    return ParsedLog(_frame(source, records, numbers), rejects)


class _DuplicatedKeys(ValueError):
    pass


def _object_or_duplicates(pairs: list[tuple[str, object]]) -> dict:
    """``json.loads`` keeps the last of repeated keys silently; a row saying two things is refused instead."""
    dups = duplicated_names([k for k, _ in pairs])
    if dups:
        raise _DuplicatedKeys(", ".join(dups))
    return dict(pairs)


def _parse_jsonl(source: str, data: bytes, allow_extra: bool) -> ParsedLog:
    records, numbers, rejects = [], [], []
    # Line by line: a line that is not UTF-8 is a reject with its bytes escaped (decoding the whole file with
    # errors="replace" turned them into U+FFFD, and the mangled ids were accepted).
    for line_no, raw_line in enumerate(data.splitlines(), start=1):
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
        records.append({c: rec[c] for c in INTERACTION_COLUMNS})
        numbers.append(line_no)
    for rec in records:
        for c in ("user_id", "item_id"):
            rec[c] = _json_id(rec[c])
    return ParsedLog(_frame(source, records, numbers), rejects)


@dataclass
class ValidatedDay:
    """A day's accepted rows in event order, and every rejected row with its reason."""

    clean: pd.DataFrame  # user_id, item_id, ts, source_file, row; sorted by (ts, source_file, row)
    rejects: pa.Table  # REJECTS_SCHEMA
    unreadable_files: list[str]

    def reject_counts(self) -> dict[str, int]:
        cats = pd.Series(self.rejects.column("reason").to_pylist(), dtype=object).str.split(":").str[0]
        return {r: int((cats == r).sum()) for r in REASONS}


def validate_day(parsed: list[ParsedLog], dt: str) -> ValidatedDay:
    """Null ids, unparseable or out-of-day timestamps and duplicates become rejects; the rest is the day."""
    day_start = pd.Timestamp(dt_mod.date.fromisoformat(dt), tz="UTC")
    day_end = day_start + pd.Timedelta(days=1)
    rejects = [r for p in parsed for r in p.rejects]
    # Also when no file had a row: a day of only unreadable files lost them (they were not kept).
    unreadable = [p.rejects[0]["source_file"] for p in parsed if p.unreadable]
    frames = [p.rows for p in parsed if len(p.rows)]
    if not frames:
        empty = pd.DataFrame({"user_id": [], "item_id": [], "ts": pd.Series([], dtype="datetime64[us, UTC]")})
        return ValidatedDay(empty, _rejects_table(rejects), unreadable)
    rows = pd.concat(frames, ignore_index=True)
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
    ok = reason.isna()
    key = ["user_id", "item_id", "ts"]
    dup = ok & rows.duplicated(subset=key, keep="first") & ok
    if dup.any():  # a duplicate names the row it repeats, so the reject can be traced
        first = rows[ok].drop_duplicates(subset=key, keep="first")
        ref = rows[dup].reset_index().merge(first, on=key, suffixes=("", "_first")).set_index("index")
        mark(dup, lambda r: DUPLICATE + ": of " + ref["source_file_first"] + " row " + ref["row_first"].astype(str))
    bad = reason.notna()
    if bad.any():
        raw = rows.loc[bad, ["user_id", "item_id", "ts_raw"]].rename(columns={"ts_raw": "ts"})
        for (src, row, why), rec in zip(
            rows.loc[bad, ["source_file", "row"]].assign(why=reason[bad]).itertuples(index=False),
            raw.to_dict("records"),
        ):
            rejects.append(_reject(src, row, why, rec))
    clean = rows.loc[~bad, ["user_id", "item_id", "ts", "source_file", "row"]]
    clean = clean.sort_values(["ts", "source_file", "row"], kind="stable").reset_index(drop=True)
    return ValidatedDay(clean, _rejects_table(rejects), unreadable)


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


def _rejects_table(rejects: list[dict]) -> pa.Table:
    rejects = sorted(rejects, key=lambda r: (r["source_file"], r["row"]))
    return pa.Table.from_pylist(rejects, schema=REJECTS_SCHEMA)


# ---------------------------------------------------------------------------------------------------------
# Vocab and sequences
# ---------------------------------------------------------------------------------------------------------
def extend_vocab(vocab: pa.Table, ids_in_order: pd.Series, id_col: str, idx_col: str) -> tuple[pa.Table, int]:
    """Append ids not yet known, numbered from max+1 in order of first appearance; old ids never change.

    Indices start at 1 (0 is padding for items; kept for users too so both maps read the same). Arrow's hash
    lookups, not a Python set of every known id: the user map grows with the lake, the day's ids do not.
    """
    day_ids = pa.array(pd.unique(ids_in_order.to_numpy(dtype=object)), pa.string())
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


def lookup(vocab: pa.Table, ids: pd.Series, id_col: str, idx_col: str) -> np.ndarray:
    """The indices of ``ids`` (all in ``vocab``) by a hash lookup of the day's ids in the map."""
    day_ids = pa.array(ids.to_numpy(dtype=object), pa.string())
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
